/**
 * User-namespace id maps (docker --userns-remap; the graph driver's
 * Init UIDMaps/GIDMaps). Pure.
 */
export interface IdMap {
  containerId: number;
  hostId: number;
  size: number;
}

export interface IdMaps {
  uids: IdMap[];
  gids: IdMap[];
}

/** container id → host id, or null when outside every range. */
export function toHost(maps: IdMap[], id: number): number | null {
  for (const m of maps) if (id >= m.containerId && id < m.containerId + m.size) return m.hostId + (id - m.containerId);
  return null;
}

/** host id → container id, or null when outside every range. */
export function toContainer(maps: IdMap[], id: number): number | null {
  for (const m of maps) if (id >= m.hostId && id < m.hostId + m.size) return m.containerId + (id - m.hostId);
  return null;
}
