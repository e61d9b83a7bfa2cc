/**
 * Worker-thread side of extractLayer: parses the tar it is given and writes
 * it with sync fs calls (measured ~2× faster than fs.promises), so that
 * neither the parsing nor the syscalls block the caller's event loop; or,
 * as the second worker of a stream job, computes the diffId in parallel.
 * One job at a time; the worker is reused for the next job.
 */
import { createHash, type Hash } from 'node:crypto';
import { parentPort } from 'node:worker_threads';
import { runFileJob, runJob, SLOT_SIZE, type FromWorker, type Job, type ToWorker } from './extract-core.js';

if (!parentPort) throw new Error('extract-worker must run in a worker thread');
const port = parentPort;
const send = (m: FromWorker): void => port.postMessage(m);

interface Ring {
  data: SharedArrayBuffer;
  ctl: Int32Array;
}
let job: Job | null = null;
let ring: Ring | null = null;
let hash: { h: Hash; bytes: number; ring: Ring } | null = null;

/** This consumer is done with a slot. */
function release(r: Ring, slot: number): void {
  Atomics.sub(r.ctl, slot, 1);
  Atomics.notify(r.ctl, slot);
}

port.on('message', (m: ToWorker) => {
  switch (m.t) {
    case 'stream':
      ring = { data: m.data, ctl: new Int32Array(m.ctl) };
      job = runJob(m.cfg, send, false);
      break;
    case 'slot': {
      const r = ring!;
      const ok = job?.push(Buffer.from(r.data, m.slot * SLOT_SIZE, m.len), m.len) ?? false;
      release(r, m.slot);
      if (ok) send({ t: 'ack', bytes: m.len, entries: job!.entries });
      break;
    }
    case 'end':
      job?.end();
      job = null;
      ring = null;
      break;
    case 'hash':
      hash = { h: createHash('sha256'), bytes: 0, ring: { data: m.data, ctl: new Int32Array(m.ctl) } };
      break;
    case 'hslot': {
      const x = hash!;
      x.h.update(new Uint8Array(x.ring.data, m.slot * SLOT_SIZE, m.len));
      x.bytes += m.len;
      release(x.ring, m.slot);
      break;
    }
    case 'hend':
      send({ t: 'digest', diffId: `sha256:${hash!.h.digest('hex')}`, bytes: hash!.bytes });
      hash = null;
      break;
    case 'file':
      // synchronous until the whole file is extracted
      runFileJob(m, send);
      break;
  }
});
