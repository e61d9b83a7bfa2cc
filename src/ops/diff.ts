/**
 * A unified diff (`diff -u` format, 3 lines of context) of two texts, for
 * `cvmfs-thin setup --dry-run`. Configuration files are small (containerd's
 * default config is ~250 lines), so a plain LCS table is fast enough.
 */

type Op = { kind: ' ' | '-' | '+'; line: string };

function splitLines(text: string): string[] {
  if (text === '') return [];
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  else lines[lines.length - 1] += '\n\\ No newline at end of file';
  return lines;
}

function script(a: string[], b: string[]): Op[] {
  const n = a.length;
  const m = b.length;
  // lcs[i][j]: length of the LCS of a[i..] and b[j..]
  const lcs: Uint32Array[] = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) lcs[i]![j] = a[i] === b[j] ? lcs[i + 1]![j + 1]! + 1 : Math.max(lcs[i + 1]![j]!, lcs[i]![j + 1]!);
  }
  const ops: Op[] = [];
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) {
      ops.push({ kind: ' ', line: a[i++]! });
      j++;
    } else if (j < m && (i === n || lcs[i]![j + 1]! >= lcs[i + 1]![j]!)) ops.push({ kind: '+', line: b[j++]! });
    else ops.push({ kind: '-', line: a[i++]! });
  }
  // deletions before insertions inside a change, as diff(1) prints them
  for (let k = 0; k < ops.length; k++) {
    if (ops[k]!.kind !== '+') continue;
    let e = k;
    while (e < ops.length && ops[e]!.kind === '+') e++;
    let d = e;
    while (d < ops.length && ops[d]!.kind === '-') d++;
    if (d > e) ops.splice(k, d - k, ...ops.slice(e, d), ...ops.slice(k, e));
    k = d - 1;
  }
  return ops;
}

/** `diff -u` of `before` and `after` labelled with `from`/`to`; '' when they are equal. */
export function unifiedDiff(before: string, after: string, from: string, to: string, context = 3): string {
  if (before === after) return '';
  const ops = script(splitLines(before), splitLines(after));
  const out: string[] = [`--- ${from}`, `+++ ${to}`];
  let k = 0;
  // line numbers (1-based) in a and b at op index k
  const posA: number[] = [];
  const posB: number[] = [];
  let la = 1;
  let lb = 1;
  for (const o of ops) {
    posA.push(la);
    posB.push(lb);
    if (o.kind !== '+') la++;
    if (o.kind !== '-') lb++;
  }
  posA.push(la);
  posB.push(lb);
  while (k < ops.length) {
    while (k < ops.length && ops[k]!.kind === ' ') k++;
    if (k >= ops.length) break;
    const start = Math.max(0, k - context);
    let end = k;
    // extend the hunk while changes are closer than 2*context lines apart
    for (;;) {
      while (end < ops.length && ops[end]!.kind !== ' ') end++;
      let next = end;
      while (next < ops.length && ops[next]!.kind === ' ') next++;
      if (next < ops.length && next - end <= 2 * context) end = next;
      else {
        end = Math.min(ops.length, end + context);
        break;
      }
    }
    const hunk = ops.slice(start, end);
    const lenA = hunk.filter((o) => o.kind !== '+').length;
    const lenB = hunk.filter((o) => o.kind !== '-').length;
    const sa = lenA === 0 ? posA[start]! - 1 : posA[start]!;
    const sb = lenB === 0 ? posB[start]! - 1 : posB[start]!;
    out.push(`@@ -${sa}${lenA === 1 ? '' : `,${lenA}`} +${sb}${lenB === 1 ? '' : `,${lenB}`} @@`);
    for (const o of hunk) out.push(`${o.kind}${o.line}`);
    k = end;
  }
  return `${out.join('\n')}\n`;
}
