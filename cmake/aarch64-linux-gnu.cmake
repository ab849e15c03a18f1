# Cross build for ARM64 (the portable kernels), run under qemu-user by ctest. Used by scripts/test.sh when
# Debian's g++-aarch64-linux-gnu and qemu-user are installed (.ci/run installs them).
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)
set(CMAKE_CROSSCOMPILING_EMULATOR qemu-aarch64;-L;/usr/aarch64-linux-gnu)
