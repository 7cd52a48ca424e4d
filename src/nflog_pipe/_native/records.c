/*
 * Receiver-side checks of record areas (see nflog.h for the layout).  Every
 * frame's records are validated here before any byte reaches a pcap output.
 */
#include <stddef.h>
#include <stdint.h>

#include "record.h"
#include "records.h"

int nzp_validate(const unsigned char *area, size_t len, uint32_t count,
                 uint32_t snaplen, uint32_t *bad_index)
{
    size_t off = 0;
    uint32_t i;
    for (i = 0; i < count; i++) {
        uint32_t caplen, origlen;
        *bad_index = i;
        if (len - off < NZP_REC_HDR)
            return off == len ? NZP_E_COUNT : NZP_E_SHORT;
        caplen = get_le32(area + off + 8);
        origlen = get_le32(area + off + 12);
        if (caplen > snaplen)
            return NZP_E_CAPLEN;
        if (origlen < caplen)
            return NZP_E_ORIGLEN;
        if (len - off - NZP_REC_HDR < caplen)
            return NZP_E_SHORT;
        off += NZP_REC_HDR + caplen;
    }
    *bad_index = count;
    return off == len ? 0 : NZP_E_TRAILING;
}

uint32_t nzp_index(const unsigned char *area, size_t len, uint32_t count,
                   uint32_t *offsets, uint64_t *ts_usec)
{
    size_t off = 0;
    uint32_t i;
    for (i = 0; i < count && len - off >= NZP_REC_HDR; i++) {
        offsets[i] = (uint32_t)off;
        ts_usec[i] = (uint64_t)get_le32(area + off) * 1000000u +
                     get_le32(area + off + 4);
        off += NZP_REC_HDR + get_le32(area + off + 8);
        if (off > len)
            break;
    }
    return i;
}
