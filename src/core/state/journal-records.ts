/** The journal's record format: `u32 length | u32 crc32 | JSON` (see journal.ts). */
const CRC_TABLE = (() => {
  const t = new Int32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c;
  }
  return t;
})();

export function crc32(buf: Uint8Array): number {
  let c = -1;
  for (let i = 0; i < buf.length; i++) c = CRC_TABLE[(c ^ buf[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ -1) >>> 0;
}

const HEADER = 8;
/** A record larger than this is treated as corruption on replay. */
const MAX_RECORD = 64 << 20;

export function encodeRecord(rec: unknown): Buffer {
  const body = Buffer.from(JSON.stringify(rec), 'utf8');
  const out = Buffer.allocUnsafe(HEADER + body.length);
  out.writeUInt32LE(body.length, 0);
  out.writeUInt32LE(crc32(body), 4);
  body.copy(out, HEADER);
  return out;
}

/** Decode records; returns them and the byte length of the valid prefix. */
export function decodeRecords<R>(buf: Buffer): { records: R[]; validBytes: number } {
  const records: R[] = [];
  let off = 0;
  while (off + HEADER <= buf.length) {
    const len = buf.readUInt32LE(off);
    const crc = buf.readUInt32LE(off + 4);
    if (len === 0 || len > MAX_RECORD || off + HEADER + len > buf.length) break;
    const body = buf.subarray(off + HEADER, off + HEADER + len);
    if (crc32(body) !== crc) break;
    try {
      records.push(JSON.parse(body.toString('utf8')) as R);
    } catch {
      break;
    }
    off += HEADER + len;
  }
  return { records, validBytes: off };
}
