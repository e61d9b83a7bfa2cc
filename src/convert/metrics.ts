/**
 * The converter's figures for node_exporter's textfile collector
 * (`--metrics-textfile FILE`): layers converted or found present, compressed
 * bytes read, wall time, images by result. Written atomically once per run,
 * so a scrape never sees half a file.
 */
import type { ImageSummary } from './convert.js';

export async function writeConvertMetrics(file: string, summaries: readonly ImageSummary[], seconds: number): Promise<void> {
  const { createRegistry, writeTextfile } = await import('../core/telemetry/metrics.js');
  const { metrics, registry } = await createRegistry({ defaultMetrics: false });
  let converted = 0;
  let present = 0;
  let bytes = 0;
  for (const s of summaries) {
    metrics.inc('convert_images_total', { result: s.status === 'converted' ? 'ok' : s.status === 'skipped' ? 'skipped' : 'error' });
    for (const l of s.layers) {
      if (l.status === 'unpacked') converted++;
      else if (l.status === 'present' || l.status === 'present-foreign') present++;
      bytes += l.bytes;
    }
  }
  metrics.inc('convert_layers_total', { result: 'converted' }, converted);
  metrics.inc('convert_layers_total', { result: 'present' }, present);
  metrics.inc('convert_bytes_total', {}, bytes);
  metrics.inc('convert_seconds_total', {}, seconds);
  await writeTextfile(file, registry);
}
