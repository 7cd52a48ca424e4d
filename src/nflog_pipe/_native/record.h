/*
 * The pcap record header, as the record areas carry it (little-endian,
 * microseconds; docs/frame-format.md):
 *     u32 ts_sec, u32 ts_usec, u32 caplen, u32 origlen, caplen bytes of data
 * The one C definition, included by nflog.c, records.c and bpf.c; Python's is
 * pcap.RECORD_HEADER (a unit test compares the two through _records).
 * A plain C header: not for cffi's cdef parser.
 */
#ifndef NZP_RECORD_H
#define NZP_RECORD_H

#include <stdint.h>

#define NZP_REC_HDR 16

static inline uint32_t get_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) |
           ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline void put_le32(unsigned char *p, uint32_t v)
{
    p[0] = v & 0xff; p[1] = (v >> 8) & 0xff;
    p[2] = (v >> 16) & 0xff; p[3] = (v >> 24) & 0xff;
}

#endif
