# minicpm-edge in a container: the one-file executable from `make dist` on a slim base, as a non-root user.
#   docker build -t minicpm-edge .
#   docker run -p 8080:8080 -v minicpm-models:/models minicpm-edge serve --model openbmb/MiniCPM4-0.5B
# Models pulled from the hub land in the volume (HF_HOME=/models/hf); a local model directory can be mounted
# under /models and passed as --model /models/<dir>.

FROM node:20-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake g++ make && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
RUN make dist

FROM debian:bookworm-slim
RUN useradd --system --create-home --uid 10001 minicpm && mkdir -p /models && chown minicpm /models
COPY --from=build /src/dist/minicpm-edge /usr/local/bin/minicpm-edge
USER minicpm
ENV MINICPM_HOST=0.0.0.0 MINICPM_PORT=8080 HF_HOME=/models/hf MINICPM_CACHE=/models/minicpm-edge TMPDIR=/tmp
VOLUME /models
EXPOSE 8080
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s CMD ["minicpm-edge", "health"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["minicpm-edge"]
CMD ["serve"]
