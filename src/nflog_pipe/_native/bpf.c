/*
 * Record selection for the receiver's traffic buffer: time window and a BPF
 * program compiled by libpcap, one C loop per record area (no per-packet
 * Python).  Declarations and contracts in bpf.h.
 */
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <pcap/pcap.h>

#include "bpf.h"
#include "record.h"

struct nzp_filter {
    struct bpf_program prog;
};

struct nzp_filter *nzp_filter_new(const char *expr, uint32_t snaplen, char *err,
                                  size_t errlen)
{
    struct nzp_filter *f;
    pcap_t *p = pcap_open_dead(DLT_RAW, (int)snaplen);

    if (p == NULL) {
        snprintf(err, errlen, "pcap_open_dead failed");
        return NULL;
    }
    f = calloc(1, sizeof(*f));
    if (f == NULL) {
        snprintf(err, errlen, "out of memory");
        pcap_close(p);
        return NULL;
    }
    if (pcap_compile(p, &f->prog, expr, 1, PCAP_NETMASK_UNKNOWN) != 0) {
        snprintf(err, errlen, "%s", pcap_geterr(p));
        pcap_close(p);
        free(f);
        return NULL;
    }
    /* the program does not refer to the pcap_t it was compiled with */
    pcap_close(p);
    return f;
}

void nzp_filter_free(struct nzp_filter *f)
{
    if (f != NULL) {
        pcap_freecode(&f->prog);
        free(f);
    }
}

uint32_t nzp_filter_len(const struct nzp_filter *f)
{
    return f->prog.bf_len;
}

size_t nzp_filter_export(const struct nzp_filter *f, unsigned char *out, size_t cap)
{
    size_t n = (size_t)f->prog.bf_len * sizeof(struct bpf_insn);

    if (n > cap)
        return 0;
    memcpy(out, f->prog.bf_insns, n);
    return n;
}

struct nzp_filter *nzp_filter_import(const unsigned char *insns, size_t len)
{
    struct nzp_filter *f;
    size_t n = len / sizeof(struct bpf_insn);

    if (n == 0 || len % sizeof(struct bpf_insn) != 0 || n > 65536)
        return NULL;
    f = calloc(1, sizeof(*f));
    if (f == NULL)
        return NULL;
    /* pcap_freecode() frees bf_insns with free() */
    f->prog.bf_insns = malloc(len);
    if (f->prog.bf_insns == NULL) {
        free(f);
        return NULL;
    }
    memcpy(f->prog.bf_insns, insns, len);
    f->prog.bf_len = (u_int)n;
    if (!bpf_validate(f->prog.bf_insns, (int)n)) {
        nzp_filter_free(f);
        return NULL;
    }
    return f;
}

static inline int match(const struct nzp_filter *f, const unsigned char *rec)
{
    struct pcap_pkthdr h;
    h.ts.tv_sec = get_le32(rec);
    h.ts.tv_usec = get_le32(rec + 4);
    h.caplen = get_le32(rec + 8);
    h.len = get_le32(rec + 12);
    return pcap_offline_filter(&f->prog, &h, rec + NZP_REC_HDR) != 0;
}

int nzp_filter_match(const struct nzp_filter *f, const unsigned char *pkt,
                     uint32_t caplen, uint32_t origlen)
{
    struct pcap_pkthdr h;
    memset(&h, 0, sizeof(h));
    h.caplen = caplen;
    h.len = origlen;
    return pcap_offline_filter(&f->prog, &h, pkt) != 0;
}

uint32_t nzp_select(const struct nzp_filter *f, const unsigned char *area, size_t len,
                    const uint32_t *offsets, const uint64_t *ts, uint32_t first,
                    uint32_t count, uint64_t ts_lo, uint64_t ts_hi, uint32_t *out_idx,
                    uint64_t *out_bytes)
{
    uint32_t i, n = 0;
    uint64_t bytes = 0;

    for (i = first; i < count; i++) {
        size_t off = offsets[i];
        uint32_t caplen;
        if (off > len || len - off < NZP_REC_HDR)
            break;
        caplen = get_le32(area + off + 8);
        if (len - off - NZP_REC_HDR < caplen)
            break;
        if (ts[i] < ts_lo || ts[i] >= ts_hi)
            continue;
        if (f != NULL && !match(f, area + off))
            continue;
        out_idx[n++] = i;
        bytes += NZP_REC_HDR + (uint64_t)caplen;
    }
    *out_bytes += bytes;
    return n;
}

uint32_t nzp_tail_fit(const unsigned char *area, size_t len, const uint32_t *offsets,
                      const uint32_t *idx, uint32_t n, uint64_t budget, uint64_t *used)
{
    uint64_t total = 0;
    uint32_t k = n;

    while (k > 0) {
        size_t off = offsets[idx[k - 1]];
        uint64_t size;
        if (off > len || len - off < NZP_REC_HDR)
            break;
        size = NZP_REC_HDR + (uint64_t)get_le32(area + off + 8);
        if (total + size > budget)
            break;
        total += size;
        k--;
    }
    *used = total;
    return k;
}

size_t nzp_gather(const unsigned char *area, size_t len, const uint32_t *offsets,
                  const uint32_t *idx, uint32_t n, unsigned char *out, size_t cap,
                  uint32_t *taken)
{
    size_t pos = 0;
    uint32_t i;

    for (i = 0; i < n; i++) {
        size_t off = offsets[idx[i]];
        size_t size;
        if (off > len || len - off < NZP_REC_HDR)
            break;
        size = NZP_REC_HDR + (size_t)get_le32(area + off + 8);
        if (size > len - off || size > cap - pos)
            break;
        memcpy(out + pos, area + off, size);
        pos += size;
    }
    *taken = i;
    return pos;
}

int nzp_malloc_mmap_threshold(size_t threshold)
{
    return mallopt(M_MMAP_THRESHOLD, (int)threshold);
}
