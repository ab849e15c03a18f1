/**
 * MiniCPM tool-call format: the Python-call parser on recorded MiniCPM-style outputs (several calls, Python and
 * JSON literals, nested dicts, triple-quoted strings, malformed calls kept as text), the streaming parser
 * against the one-shot parse at every split point, and the rendering of tools, tool calls and tool turns.
 */
import { describe, expect, test } from 'bun:test'
import {
  minicpmToolFormat,
  parsePythonCalls,
  parseToolOutput,
  resolveToolFormat,
  type ToolOutputPart,
} from '../src/chat/tools/index'

const F = minicpmToolFormat

// Recorded shapes of MiniCPM3 / MiniCPM4-MCP answers (thought, one block of calls, trailing text).
const RECORDED = {
  weather:
    "<|thought_start|>\nThe user wants the weather in two cities; I will call get_weather twice.\n<|thought_end|>\n" +
    "<|tool_call_start|>\n```python\nget_weather(location='Beijing', unit=\"celsius\")\nget_weather(location='Paris', unit='celsius')\n```\n<|tool_call_end|>\n",
  literals:
    '<|tool_call_start|>\n```python\nsearch(query="hotels", limit=5, ratio=0.25, exact=True, page=None, ' +
    'strict=false, extra=null, tags=["a", \'b\'], pair=(1, 2))\n```\n<|tool_call_end|>\nSearching now.',
  nested:
    "<|tool_call_start|>\n```python\ncreate_event(event={'title': 'Sync', 'when': {'day': 'Mon', 'hour': 9}, " +
    "'attendees': [{'name': 'A', 'ok': True}, {'name': 'B', 'ok': False}]}, notify=True)\n```\n<|tool_call_end|>\n",
  triple:
    '<|tool_call_start|>\n```python\nwrite_file(path="/tmp/a.py", content="""def f(x):\n    return \'x\' + "y"\n""", mode=\'w\')\n```\n<|tool_call_end|>\n',
  malformed:
    'Let me try.\n<|tool_call_start|>\n```python\nget_weather(Beijing)\n```\n<|tool_call_end|>\nDone.',
  plain: '<|thought_start|>\nNo tool is needed.\n<|thought_end|>\nThe answer is 42.',
  unclosed: '<|tool_call_start|>\n```python\nping(host="a")\n```\n',
}

describe('python call parser', () => {
  test('keyword calls with Python and JSON literals', () => {
    const calls = parsePythonCalls('f(a=1, b=-2.5e3, c="x\\ny", d=\'q\', e=True, g=None, h=false, i=null, j=[1, (2, 3)], k={"x": {"y": [ ]}})')
    expect(calls).toEqual([
      {
        name: 'f',
        arguments: { a: 1, b: -2500, c: 'x\ny', d: 'q', e: true, g: null, h: false, i: null, j: [1, [2, 3]], k: { x: { y: [] } } },
      },
    ])
  })

  test('several calls, escapes, raw and adjacent strings, trailing commas', () => {
    const calls = parsePythonCalls('a(x="\\u00e9\\x41\\t", y=r"\\d+", z="ab" \'cd\',)\nb()\n  c.d(k=[1,2,],)')
    expect(calls).toEqual([
      { name: 'a', arguments: { x: 'éA\t', y: '\\d+', z: 'abcd' } },
      { name: 'b', arguments: {} },
      { name: 'c.d', arguments: { k: [1, 2] } },
    ])
  })

  test('what it refuses: positional arguments, expressions, unknown names, unterminated strings, empty', () => {
    for (const bad of ['f(1)', 'f(a=1+2)', 'f(a=foo)', 'f(a="x)', 'f(a=1', '', 'f(a=1, a=2)', '1()']) {
      expect(() => parsePythonCalls(bad)).toThrow()
    }
  })
})

describe('MiniCPM output parsing', () => {
  test('recorded outputs: thought, calls, trailing text', () => {
    const results = Object.fromEntries(Object.entries(RECORDED).map(([k, v]) => [k, parseToolOutput(F, v)]))
    console.log(JSON.stringify(results, null, 1).slice(0, 1500))
    expect(results.weather).toEqual([
      { type: 'reasoning', text: 'The user wants the weather in two cities; I will call get_weather twice.' },
      { type: 'call', call: { name: 'get_weather', arguments: { location: 'Beijing', unit: 'celsius' } } },
      { type: 'call', call: { name: 'get_weather', arguments: { location: 'Paris', unit: 'celsius' } } },
    ])
    expect(results.literals).toEqual([
      {
        type: 'call',
        call: {
          name: 'search',
          arguments: { query: 'hotels', limit: 5, ratio: 0.25, exact: true, page: null, strict: false, extra: null, tags: ['a', 'b'], pair: [1, 2] },
        },
      },
      { type: 'content', text: 'Searching now.' },
    ])
    expect(results.nested![0]).toEqual({
      type: 'call',
      call: {
        name: 'create_event',
        arguments: {
          event: { title: 'Sync', when: { day: 'Mon', hour: 9 }, attendees: [{ name: 'A', ok: true }, { name: 'B', ok: false }] },
          notify: true,
        },
      },
    })
    expect(results.triple).toEqual([
      { type: 'call', call: { name: 'write_file', arguments: { path: '/tmp/a.py', content: 'def f(x):\n    return \'x\' + "y"\n', mode: 'w' } } },
    ])
    // A block that does not parse stays text, markers included: nothing is lost.
    expect(results.malformed).toEqual([
      { type: 'content', text: 'Let me try.<|tool_call_start|>\n```python\nget_weather(Beijing)\n```\n<|tool_call_end|>\nDone.' },
    ])
    expect(results.plain).toEqual([
      { type: 'reasoning', text: 'No tool is needed.' },
      { type: 'content', text: 'The answer is 42.' },
    ])
    // The output ended (EOS) before the end marker: a block that parses still counts.
    expect(results.unclosed).toEqual([{ type: 'call', call: { name: 'ping', arguments: { host: 'a' } } }])
  })

  test('streaming equals one-shot at every split point, and in one-character pieces', () => {
    const merge = (parts: ToolOutputPart[]) => {
      const out: ToolOutputPart[] = []
      for (const p of parts) {
        const last = out[out.length - 1]
        if (p.type !== 'call' && last && last.type === p.type) last.text += p.text
        else out.push(p.type === 'call' ? p : { ...p })
      }
      return out
    }
    let n = 0
    for (const text of Object.values(RECORDED)) {
      const whole = parseToolOutput(F, text)
      for (let cut = 0; cut <= text.length; cut++) {
        const p = F.parser()
        expect(merge([...p.push(text.slice(0, cut)), ...p.push(text.slice(cut)), ...p.end()])).toEqual(whole)
        n++
      }
      const p = F.parser()
      const parts: ToolOutputPart[] = []
      for (const ch of text) parts.push(...p.push(ch))
      parts.push(...p.end())
      expect(merge(parts)).toEqual(whole)
      // Markers are never emitted as content while they are being streamed.
      for (const part of parts) if (part.type === 'content' && !text.includes('get_weather(Beijing)')) expect(part.text).not.toContain('<|')
    }
    console.log(`${n} split points checked`)
  })
})

describe('MiniCPM rendering', () => {
  test('tools as Python stubs under # Functions, tool calls and tool turns', () => {
    const prompt = F.render(
      [
        { role: 'system', content: 'Be helpful.' },
        { role: 'user', content: 'Weather in Paris?' },
        {
          role: 'assistant',
          content: '',
          reasoning: 'Need the tool.',
          toolCalls: [{ name: 'get_weather', arguments: { location: 'Paris', days: 2, opts: { metric: true } } }],
        },
        { role: 'tool', content: '{"temp": 21}' },
      ],
      [
        {
          name: 'get_weather',
          description: 'Get the weather.',
          parameters: {
            type: 'object',
            properties: {
              location: { type: 'string', description: 'City' },
              unit: { type: 'string', enum: ['celsius', 'fahrenheit'] },
              days: { type: 'integer', default: 1 },
            },
            required: ['location'],
          },
        },
      ],
      { addGenerationPrompt: true },
    )
    console.log(prompt)
    expect(prompt.startsWith('<|im_start|>system\nBe helpful.\n# Functions\nHere is a list of functions that you can invoke:\n```python\n')).toBe(true)
    expect(prompt).toContain('class Unit(Enum):\n    enum_0 = "celsius"\n    enum_1 = "fahrenheit"\n')
    expect(prompt).toContain('def get_weather(location, unit=None, days=1):\n    """Get the weather.\n\n    Args:\n')
    expect(prompt).toContain('        location: str = Field(..., description="City")\n')
    expect(prompt).toContain('        days: Optional[int] = 1\n')
    expect(prompt).toContain('# Function Call Rule and Output Format\n')
    expect(prompt).toContain(
      '<|im_start|>assistant\n<|thought_start|>\nNeed the tool.\n<|thought_end|>\n<|tool_call_start|>\n```python\n' +
        'get_weather(location="Paris", days=2, opts={"metric": True})\n```\n<|tool_call_end|>\n<|im_end|>\n',
    )
    expect(prompt.endsWith('<|im_start|>tool\n{"temp": 21}<|im_end|>\n<|im_start|>assistant\n')).toBe(true)
    // What the format renders, it parses back.
    const back = parseToolOutput(F, prompt.split('<|im_start|>assistant\n')[1]!.split('<|im_end|>')[0]!)
    expect(back.filter((p) => p.type === 'call')).toEqual([
      { type: 'call', call: { name: 'get_weather', arguments: { location: 'Paris', days: 2, opts: { metric: true } } } },
    ])
  })

  test('tool names must be Python identifiers; format resolution', () => {
    expect(() => F.render([{ role: 'user', content: 'x' }], [{ name: 'get-weather' }], { addGenerationPrompt: true })).toThrow(
      /Python identifier/,
    )
    expect(resolveToolFormat({ modelType: 'minicpm' })?.name).toBe('minicpm')
    expect(resolveToolFormat({ configured: 'none', modelType: 'minicpm' })).toBeNull()
    expect(resolveToolFormat({ modelType: 'llama', template: '{{ messages }}' })).toBeNull()
    expect(resolveToolFormat({ modelType: 'llama', template: "... '<|tool_call_start|>' ..." })?.name).toBe('minicpm')
    expect(() => resolveToolFormat({ configured: 'xml' })).toThrow(/unknown tool format/)
  })
})
