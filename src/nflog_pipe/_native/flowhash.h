/*
 * Symmetric flow hash and shard choice, shared by the sender's netlink walker
 * (nflog.c) and the receiver's record splitter (records.c): both sides must
 * put a packet in the same shard.  Included as C source (static inline), not
 * parsed by cffi.
 *
 * Key NZP_KEY_ADDR (default): the address pair and the protocol.  Every packet
 * of a flow carries them, fragments included (IPv4: the protocol field of
 * every fragment; IPv6: the next header after hop-by-hop/routing/destination
 * options, or the fragment header's next header), so both directions and all
 * fragments of every datagram land together.
 * Key NZP_KEY_PORTS: the same plus the TCP/UDP/SCTP ports, but only for
 * packets that are not fragments (a fragment hashes as with NZP_KEY_ADDR).
 * Spreads better between few hosts; a flow whose datagrams are sometimes
 * fragmented is then split between two shards (docs/architecture.md).
 * Symmetric: the two addresses (and the two ports) are ordered before
 * hashing, so A->B and B->A give the same value.
 * Not IP, or too short to read the addresses: hash 0 (shard 0).
 *
 * Shard: jump consistent hash (Lamping & Veach 2014): going from N to N+1
 * shards moves only the flows that go to the new shard, 1/(N+1) of them.
 */
#ifndef NZP_FLOWHASH_H
#define NZP_FLOWHASH_H

#include <stdint.h>
#include <string.h>

#define NZP_KEY_ADDR 0
#define NZP_KEY_PORTS 1

static inline uint64_t nzp_mix64(uint64_t x)
{
    /* splitmix64's finaliser */
    x ^= x >> 30; x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27; x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

static inline uint64_t nzp_rd64(const unsigned char *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline uint32_t nzp_rd32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

static inline uint64_t nzp_ports(const unsigned char *l4, uint32_t avail, uint8_t proto)
{
    uint16_t a, b;
    if ((proto != 6 && proto != 17 && proto != 132 && proto != 136) || avail < 4)
        return 0;
    a = (uint16_t)((l4[0] << 8) | l4[1]);
    b = (uint16_t)((l4[2] << 8) | l4[3]);
    return a < b ? ((uint64_t)a << 16) | b : ((uint64_t)b << 16) | a;
}

/* The flow hash of one IP packet (caplen bytes at d). */
static inline uint64_t nzp_flow_hash(const unsigned char *d, uint32_t caplen, int key)
{
    uint64_t h, ports = 0;
    if (caplen >= 20 && (d[0] >> 4) == 4) {
        uint32_t s = nzp_rd32(d + 12), t = nzp_rd32(d + 16);
        uint32_t lo = s < t ? s : t, hi = s < t ? t : s;
        uint8_t proto = d[9];
        uint32_t ihl = (uint32_t)(d[0] & 15) * 4;
        int frag = ((d[6] & 0x3f) | d[7]) != 0;   /* MF or an offset */
        if (key == NZP_KEY_PORTS && !frag && ihl >= 20 && caplen > ihl)
            ports = nzp_ports(d + ihl, caplen - ihl, proto);
        h = nzp_mix64(((uint64_t)lo << 32 | hi) ^ ((uint64_t)proto << 56) ^ 4);
        return nzp_mix64(h ^ ports);
    }
    if (caplen >= 40 && (d[0] >> 4) == 6) {
        const unsigned char *s = d + 8, *t = d + 24, *lo, *hi;
        uint8_t nh = d[6];
        uint32_t off = 40;
        int frag = 0, i;
        /* skip the extension headers that come before the transport header */
        for (i = 0; i < 8; i++) {
            if ((nh == 0 || nh == 43 || nh == 60) && caplen >= off + 8) {
                nh = d[off];
                off += ((uint32_t)d[off + 1] + 1) * 8;
            } else if (nh == 44 && caplen >= off + 8) {
                nh = d[off];            /* the fragmented datagram's protocol */
                frag = 1;
                break;
            } else {
                break;
            }
        }
        if (memcmp(s, t, 16) <= 0) { lo = s; hi = t; } else { lo = t; hi = s; }
        if (key == NZP_KEY_PORTS && !frag && caplen > off)
            ports = nzp_ports(d + off, caplen - off, nh);
        h = nzp_mix64(nzp_rd64(lo) ^ ((uint64_t)nh << 56) ^ 6);
        h = nzp_mix64(h ^ nzp_rd64(lo + 8));
        h = nzp_mix64(h ^ nzp_rd64(hi));
        h = nzp_mix64(h ^ nzp_rd64(hi + 8));
        return nzp_mix64(h ^ ports);
    }
    return 0;
}

/* Jump consistent hash: a bucket in [0, n). */
static inline uint32_t nzp_jump(uint64_t key, uint32_t n)
{
    int64_t b = -1, j = 0;
    while (j < (int64_t)n) {
        b = j;
        key = key * 2862933555777941757ULL + 1;
        j = (int64_t)((double)(b + 1) * ((double)(1LL << 31) / (double)((key >> 33) + 1)));
    }
    return (uint32_t)b;
}

static inline uint32_t nzp_shard_of(const unsigned char *d, uint32_t caplen, int key, uint32_t n)
{
    if (n <= 1)
        return 0;
    return nzp_jump(nzp_flow_hash(d, caplen, key), n);
}

#endif
