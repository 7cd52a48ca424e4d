/*
 * Declarations for the receiver-side record helpers (cffi cdef).
 * See nflog.h for the record area layout.
 */

/* the record header size, NZP_REC_HDR: record.h */
enum nzp_error {
    NZP_E_SHORT = -1,     /* a record header or its data runs past the end */
    NZP_E_CAPLEN = -2,    /* caplen larger than the snapshot length */
    NZP_E_ORIGLEN = -3,   /* origlen smaller than caplen */
    NZP_E_COUNT = -4,     /* fewer records than the frame announced */
    NZP_E_TRAILING = -5   /* bytes left after the announced records */
};

/* Check that a record area holds exactly `count` well-formed records
 * (caplen <= snaplen, caplen <= origlen) and ends exactly at `len`.
 * Returns 0 when valid, else a negative NZP_E* code; *bad_index gets the
 * index of the first bad record. */
int nzp_validate(const unsigned char *area, size_t len, uint32_t count,
                 uint32_t snaplen, uint32_t *bad_index);


/* Collect the offset and timestamp of each record of a (validated) area into
 * caller arrays of at least `count` entries.  Returns the number collected. */
uint32_t nzp_index(const unsigned char *area, size_t len, uint32_t count,
                   uint32_t *offsets, uint64_t *ts_usec);

/* Flow sharding of a validated record area (nflog-pcap-recv with several
 * outputs): the records of each shard, in their order, are copied to `out`
 * (at least `len` bytes), shard 0's first, then shard 1's...; shard_len and
 * shard_count (nshards entries each) get each shard's size and records.
 * `which` (at least `count` bytes) is scratch space.  The shard of a record
 * is the one the sender's walker would choose (flowhash.h, `key`).
 * Returns the records split. */
uint32_t nzp_split(const unsigned char *area, size_t len, uint32_t count, int key,
                   uint32_t nshards, unsigned char *out, uint8_t *which,
                   size_t *shard_len, uint32_t *shard_count);

/* The shard of one IP packet (tests). */
uint32_t nzp_shard(const unsigned char *pkt, uint32_t caplen, int key, uint32_t nshards);
uint64_t nzp_hash(const unsigned char *pkt, uint32_t caplen, int key);

/* Keep frame-sized allocations (ZeroMQ messages of a frame) on the heap, and
 * the heap from being trimmed after each: mallopt M_MMAP_THRESHOLD 2x and
 * M_TRIM_THRESHOLD 8x frame_bytes.  0, or -1 when glibc refused. */
int nzp_keep_frame_memory(size_t frame_bytes);
