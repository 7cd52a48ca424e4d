/*
 * NFLOG netlink buffer walker: turns the kernel's NFULNL_MSG_PACKET messages
 * into pcap records (see nflog.h), once per recv(), with no Python involved.
 * The control plane (binding groups, settings) goes through libnetfilter_log;
 * the data plane is parsed here at offsets, so that a recorded buffer can be
 * replayed in tests without a kernel and no per-packet callback is needed.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <linux/capability.h>
#include <linux/netlink.h>
#include <linux/netfilter/nfnetlink.h>
#include <libnetfilter_log/libnetfilter_log.h>
#include <libnetfilter_log/linux_nfnetlink_log.h>

#include "nflog.h"

static inline void put_le32(unsigned char *p, uint32_t v)
{
    p[0] = v & 0xff; p[1] = (v >> 8) & 0xff;
    p[2] = (v >> 16) & 0xff; p[3] = (v >> 24) & 0xff;
}

static inline uint32_t get_be32(const unsigned char *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
           ((uint32_t)p[2] << 8) | p[3];
}

static inline uint64_t get_be64(const unsigned char *p)
{
    return ((uint64_t)get_be32(p) << 32) | get_be32(p + 4);
}

/* Original length of an IP packet from its header; the captured length when
 * the header does not say (too short, unknown version, IPv6 jumbogram). */
static uint32_t ip_orig_len(const unsigned char *d, uint32_t caplen)
{
    uint32_t ol = caplen;
    if (caplen >= 4 && (d[0] >> 4) == 4)
        ol = ((uint32_t)d[2] << 8) | d[3];
    else if (caplen >= 6 && (d[0] >> 4) == 6) {
        uint32_t pl = ((uint32_t)d[4] << 8) | d[5];
        if (pl)
            ol = pl + 40;
    }
    return ol < caplen ? caplen : ol;
}

static void track_seq(struct nzp_batch *b, uint16_t group, uint32_t seq)
{
    int i;
    for (i = 0; i < b->ngroups; i++) {
        if (b->groups[i] != group)
            continue;
        if (b->have_seq[i] && seq != b->next_seq[i])
            /* unsigned arithmetic handles wrap-around */
            b->seq_lost += (uint32_t)(seq - b->next_seq[i]);
        b->have_seq[i] = 1;
        b->next_seq[i] = seq + 1;
        return;
    }
}

/* One NFULNL_MSG_PACKET message body (after nlmsghdr). 0 on success. */
static int parse_packet(const unsigned char *m, size_t mlen, struct nzp_batch *b)
{
    const unsigned char *payload = NULL, *ts = NULL, *seq = NULL;
    uint32_t plen = 0, caplen, origlen, sec, usec;
    uint16_t group;
    size_t off;
    unsigned char *r;

    if (mlen < sizeof(struct nfgenmsg))
        return -1;
    group = ntohs(((const struct nfgenmsg *)m)->res_id);
    off = NLMSG_ALIGN(sizeof(struct nfgenmsg));
    while (off + sizeof(struct nlattr) <= mlen) {
        const struct nlattr *a = (const struct nlattr *)(m + off);
        size_t alen = a->nla_len;
        uint16_t type = a->nla_type & NLA_TYPE_MASK;
        if (alen < sizeof(struct nlattr) || off + alen > mlen)
            return -1;
        const unsigned char *v = m + off + NLA_HDRLEN;
        size_t vlen = alen - NLA_HDRLEN;
        switch (type) {
        case NFULA_PAYLOAD:
            payload = v; plen = (uint32_t)vlen; break;
        case NFULA_TIMESTAMP:
            if (vlen >= 16) ts = v;
            break;
        case NFULA_SEQ:
            if (vlen >= 4) seq = v;
            break;
        default:
            break;
        }
        off += NLA_ALIGN(alen);
    }
    if (seq)
        track_seq(b, group, get_be32(seq));
    if (!payload)
        return 1;               /* metadata-only message: nothing to record */
    if (b->len + NZP_REC_HDR + plen > b->cap)
        return -2;              /* caller broke the capacity contract */
    if (ts) {
        sec = (uint32_t)get_be64(ts);
        usec = (uint32_t)get_be64(ts + 8);
    } else {
        sec = b->now_sec;
        usec = b->now_usec;
        b->no_timestamp++;
    }
    caplen = plen;
    origlen = ip_orig_len(payload, caplen);
    r = b->out + b->len;
    put_le32(r, sec);
    put_le32(r + 4, usec);
    put_le32(r + 8, caplen);
    put_le32(r + 12, origlen);
    memcpy(r + NZP_REC_HDR, payload, plen);
    b->len += NZP_REC_HDR + plen;
    b->count++;
    b->packets++;
    b->bytes += plen;
    return 0;
}

int nzp_parse(const unsigned char *buf, size_t buflen, struct nzp_batch *b)
{
    size_t off = 0;
    int produced = 0;

    while (off + NLMSG_HDRLEN <= buflen) {
        const struct nlmsghdr *nh = (const struct nlmsghdr *)(buf + off);
        size_t len = nh->nlmsg_len;
        if (len < NLMSG_HDRLEN || off + len > buflen) {
            b->malformed++;
            break;              /* cannot find the next message boundary */
        }
        if (nh->nlmsg_type == NLMSG_ERROR) {
            b->nl_errors++;
        } else if (nh->nlmsg_type ==
                   ((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET)) {
            int rc = parse_packet(buf + off + NLMSG_HDRLEN,
                                  len - NLMSG_HDRLEN, b);
            if (rc == 0)
                produced++;
            else if (rc < 0)
                b->malformed++;
        } else {
            b->other_msgs++;
        }
        off += NLMSG_ALIGN(len);
    }
    return produced;
}

int nzp_read(int fd, unsigned char *rbuf, size_t rbuflen, struct nzp_batch *b,
             int max_recvs)
{
    int i;
    for (i = 0; i < max_recvs; i++) {
        ssize_t n;
        struct timeval tv;
        if (b->cap - b->len < rbuflen)
            return 1;
        n = recv(fd, rbuf, rbuflen, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            if (errno == EINTR)
                continue;
            if (errno == ENOBUFS) {
                b->enobufs++;
                continue;
            }
            return -errno;
        }
        b->recvs++;
        gettimeofday(&tv, NULL);
        b->now_sec = (uint32_t)tv.tv_sec;
        b->now_usec = (uint32_t)tv.tv_usec;
        nzp_parse(rbuf, (size_t)n, b);
    }
    return 2;
}

int nzp_drop_caps(void)
{
    struct __user_cap_header_struct hdr;
    struct __user_cap_data_struct data[2];
    memset(&hdr, 0, sizeof(hdr));
    memset(data, 0, sizeof(data));
    hdr.version = _LINUX_CAPABILITY_VERSION_3;
    hdr.pid = 0;
    if (syscall(SYS_capset, &hdr, data) != 0)
        return -errno;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -errno;
    return 0;
}
