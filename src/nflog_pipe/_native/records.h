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
