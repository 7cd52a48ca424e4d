/*
 * Receiver-side checks of record areas (see nflog.h for the layout).  Every
 * frame's records are validated here before any byte reaches a pcap output.
 */
#include <limits.h>
#include <malloc.h>
#include <stddef.h>
#include <stdint.h>

#include <string.h>

#include "record.h"
#include "records.h"
#include "flowhash.h"

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

uint32_t nzp_split(const unsigned char *area, size_t len, uint32_t count, int key,
                   uint32_t nshards, unsigned char *out, uint8_t *which,
                   size_t *shard_len, uint32_t *shard_count)
{
    size_t off = 0, at[256];
    uint32_t i, n, s;

    if (nshards < 1 || nshards > 255)
        return 0;
    for (s = 0; s < nshards; s++) {
        shard_len[s] = 0;
        shard_count[s] = 0;
    }
    /* pass 1: each record's shard and each shard's size */
    for (i = 0; i < count && len - off >= NZP_REC_HDR; i++) {
        uint32_t caplen = get_le32(area + off + 8);
        if (len - off - NZP_REC_HDR < caplen)
            break;
        s = nzp_shard_of(area + off + NZP_REC_HDR, caplen, key, nshards);
        which[i] = (uint8_t)s;
        shard_len[s] += NZP_REC_HDR + caplen;
        shard_count[s]++;
        off += NZP_REC_HDR + caplen;
    }
    n = i;
    at[0] = 0;
    for (s = 1; s < nshards; s++)
        at[s] = at[s - 1] + shard_len[s - 1];
    /* pass 2: copy each record to its shard's region */
    off = 0;
    for (i = 0; i < n; i++) {
        size_t rl = NZP_REC_HDR + get_le32(area + off + 8);
        memcpy(out + at[which[i]], area + off, rl);
        at[which[i]] += rl;
        off += rl;
    }
    return n;
}

uint32_t nzp_shard(const unsigned char *pkt, uint32_t caplen, int key, uint32_t nshards)
{
    return nzp_shard_of(pkt, caplen, key, nshards);
}

uint64_t nzp_hash(const unsigned char *pkt, uint32_t caplen, int key)
{
    return nzp_flow_hash(pkt, caplen, key);
}

int nzp_keep_frame_memory(size_t frame_bytes)
{
    /* glibc serves an allocation above M_MMAP_THRESHOLD (128 KiB at start)
     * with a fresh mmap and unmaps it at free; below it, it trims the heap
     * top above M_TRIM_THRESHOLD.  Frames travel in ZeroMQ messages of their
     * size, allocated by one thread and freed by another: every frame then
     * cost an mmap, a page fault per 4 KiB and an munmap. */
    size_t mmap_at = 2 * frame_bytes, trim_at = 8 * frame_bytes;
    if (mmap_at > (size_t)32 << 20)
        mmap_at = (size_t)32 << 20;    /* glibc's largest on 64-bit */
    if (trim_at > INT_MAX)
        trim_at = INT_MAX;
    if (frame_bytes >= mmap_at)
        return -1;
    if (!mallopt(M_MMAP_THRESHOLD, (int)mmap_at) || !mallopt(M_TRIM_THRESHOLD, (int)trim_at))
        return -1;
    return 0;
}
