/**
 * The attributes a CVMFS client makes up for every file it serves (its
 * "magic" xattrs, `cvmfs/magic_xattr.cc`, listed unless the client sets
 * CVMFS_HIDE_MAGIC_XATTRS): a tree read back from a client mount — a
 * published layer or chain under a transaction's union — lists them as if
 * the files had them. They are never image content.
 */
const MAGIC = new Set(
  (
    'authz catalog_counters chunk_list chunks compression direct_io expires external_file external_host external_timeout external_url fqrn ' +
    'hash hitrate host host_list inode_max lhash logbuffer maxfd ncleanup24 nclg ndiropen ndownload nioerr nopen pid proxy proxy_list ' +
    'proxy_list_external pubkeys rawlink repo_counters repo_metainfo revision root_hash rx speed tag timeout timeout_direct ' +
    'timestamp_last_ioerr uptime useddirp usedfd version'
  )
    .split(' ')
    .map((n) => `user.${n}`),
);

/** Whether `name` is one of the CVMFS client's made-up attributes. */
export const isCvmfsMagicXattr = (name: string): boolean => MAGIC.has(name);
