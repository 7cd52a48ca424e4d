/*
 * Declarations for record selection over record areas (cffi cdef of
 * nflog_pipe._bpf).  Must stay parseable by cffi's cdef parser: no
 * preprocessor logic, no libpcap types (struct nzp_filter hides them).
 *
 * A record area is a sequence of little-endian pcap records (see nflog.h);
 * `offsets` and `ts` are its index as built by nzp_index() (records.h):
 * the byte offset of each record in the area and its timestamp in
 * microseconds.  Records [first, count) are considered.
 */

/* A BPF program compiled by libpcap for LINKTYPE_RAW (opaque). */
struct nzp_filter;

/* Compile `expr` with pcap_compile() for raw IP packets (optimised, netmask
 * unknown).  Returns NULL on error, with libpcap's message in err. */
struct nzp_filter *nzp_filter_new(const char *expr, uint32_t snaplen, char *err,
                                  size_t errlen);
void nzp_filter_free(struct nzp_filter *f);

/* Number of BPF instructions of a compiled program (diagnostics). */
uint32_t nzp_filter_len(const struct nzp_filter *f);

/* The program's instructions as bytes (struct bpf_insn, host order), for a
 * program compiled in another process of this host (a compiler that can be
 * killed when it takes too long).  Copies 8 * len bytes into out; returns that
 * count, or 0 when cap is too small. */
size_t nzp_filter_export(const struct nzp_filter *f, unsigned char *out, size_t cap);

/* A filter from exported instructions; NULL when they are not a valid BPF
 * program (bpf_validate) or memory runs out. */
struct nzp_filter *nzp_filter_import(const unsigned char *insns, size_t len);

/* Run one packet through the filter (tests): nonzero if it matches. */
int nzp_filter_match(const struct nzp_filter *f, const unsigned char *pkt,
                     uint32_t caplen, uint32_t origlen);

/* Select the records [first, count) whose timestamp is in [ts_lo, ts_hi)
 * and, when f is not NULL, that the filter accepts (pcap_offline_filter).
 * Writes the index of each selected record to out_idx (room for
 * count - first entries), adds their record bytes (16 + caplen each) to
 * *out_bytes and returns how many were selected.  A record whose bytes would
 * run past `len` ends the walk (never read out of bounds). */
uint32_t nzp_select(const struct nzp_filter *f, const unsigned char *area, size_t len,
                    const uint32_t *offsets, const uint64_t *ts, uint32_t first,
                    uint32_t count, uint64_t ts_lo, uint64_t ts_hi, uint32_t *out_idx,
                    uint64_t *out_bytes);

/* The largest tail idx[k..n) of selected records whose record bytes add up
 * to at most `budget`.  Returns k; *used gets their bytes. */
uint32_t nzp_tail_fit(const unsigned char *area, size_t len, const uint32_t *offsets,
                      const uint32_t *idx, uint32_t n, uint64_t budget, uint64_t *used);

/* Copy the records idx[0..n) (whole records only) into out, up to cap bytes.
 * Returns the bytes written; *taken gets how many records were copied. */
size_t nzp_gather(const unsigned char *area, size_t len, const uint32_t *offsets,
                  const uint32_t *idx, uint32_t n, unsigned char *out, size_t cap,
                  uint32_t *taken);

/* Memory of the traffic buffer: make glibc serve allocations of `threshold`
 * bytes and more (received ZeroMQ messages) with their own mappings, so that
 * memory freed by eviction goes back to the system instead of staying in the
 * heap (mallopt M_MMAP_THRESHOLD; fixes the threshold glibc would otherwise
 * raise on its own).  Returns 1 on success, 0 if refused. */
int nzp_malloc_mmap_threshold(size_t threshold);
