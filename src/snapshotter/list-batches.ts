/**
 * List replies are split by bytes as well as by count: a reply must stay
 * under the gRPC message limit (16 MiB for containerd's proxy client) even
 * when snapshots carry large labels (records written before the per-snapshot
 * label cap, labels.ts MAX_LABELS_TOTAL). Sizes are an upper bound of the
 * protobuf encoding, computed without encoding.
 */
import type { Info as PbInfo } from './proto/containerd/services/snapshots/v1/snapshots.js';

/** containerd's own batch size (services/snapshots: 100 infos per ListSnapshotsResponse). */
const LIST_BATCH = 100;
/** Bytes per reply: a quarter of the 16 MiB limit, so that an estimate can never reach it. */
export const LIST_BATCH_BYTES = 4 << 20;

/** Upper bound of `Info`'s encoded size inside a ListSnapshotsResponse. */
function infoSize(i: PbInfo): number {
  // field tags and length varints: at most 1 + 5 bytes each; kind, two timestamps and the repeated-field wrapper: < 48
  let n = 64 + Buffer.byteLength(i.name) + Buffer.byteLength(i.parent);
  for (const k in i.labels) n += 18 + Buffer.byteLength(k) + Buffer.byteLength(i.labels[k]!);
  return n;
}

/** Consecutive batches of at most `maxCount` infos and `maxBytes` (a single larger info goes alone). */
export function* listBatches(infos: readonly PbInfo[], maxCount = LIST_BATCH, maxBytes = LIST_BATCH_BYTES): Generator<PbInfo[]> {
  let batch: PbInfo[] = [];
  let bytes = 0;
  for (const i of infos) {
    const n = infoSize(i);
    if (batch.length > 0 && (batch.length >= maxCount || bytes + n > maxBytes)) {
      yield batch;
      batch = [];
      bytes = 0;
    }
    batch.push(i);
    bytes += n;
  }
  if (batch.length > 0) yield batch;
}
