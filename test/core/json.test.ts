import { describe, expect, it } from 'vitest';
import { JsonSyntaxError, parseStrictJson } from '../../src/core/util/json.js';

describe('strict JSON', () => {
  it('parses what JSON.parse parses', () => {
    for (const t of ['{"a":[1,2.5e3,-0,true,false,null,"x\\u00e9\\n"]}', '[]', '"s"', ' {"b":{"c":{}}} ', '1e-3']) {
      expect(parseStrictJson(t)).toEqual(JSON.parse(t));
    }
  });
  it('rejects duplicate keys at any depth', () => {
    expect(() => parseStrictJson('{"a":1,"a":2}')).toThrow(/duplicate key "a"/);
    expect(() => parseStrictJson('{"x":[{"k":1,"k":1}]}')).toThrow(JsonSyntaxError);
  });
  it('keeps __proto__ as a plain key', () => {
    const v = parseStrictJson('{"__proto__":{"polluted":1}}') as Record<string, unknown>;
    expect(Object.hasOwn(v, '__proto__')).toBe(true);
    expect(({} as Record<string, unknown>)['polluted']).toBeUndefined();
  });
  it.each(['{', '{"a" 1}', '[1,]', '{"a":1,}', "{'a':1}", '01', 'NaN', '"\\x"', '"a\tb"', 'true false', '['.repeat(100) + ']'.repeat(100)])('rejects %j', (t) =>
    expect(() => parseStrictJson(t)).toThrow(JsonSyntaxError),
  );
});
