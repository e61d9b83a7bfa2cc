import type { ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

/** Stop benchmarked servers (close their clients, SIGTERM, a second to exit) and remove the run's directory. */
export async function stopServers(servers: { proc: ChildProcess; lean: { close(): void }; client?: { close(): void } }[], dir: string): Promise<void> {
  for (const s of servers) {
    s.client?.close();
    s.lean.close();
    s.proc.kill('SIGTERM');
  }
  await sleep(1000);
  rmSync(dir, { recursive: true, force: true });
}
