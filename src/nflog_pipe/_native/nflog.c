/*
 * NFLOG netlink buffer walker: turns the kernel's NFULNL_MSG_PACKET messages
 * into pcap records (see nflog.h), once per recv(), with no Python involved.
 * The control plane (binding groups, settings) goes through libnetfilter_log;
 * the data plane is parsed here at offsets, so that a recorded buffer can be
 * replayed in tests without a kernel and no per-packet callback is needed.
 */
#include <errno.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <grp.h>
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

#include "record.h"
#include "nflog.h"
#include "flowhash.h"

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

#define NZP_NO_ROOM (-2)

/* One NFULNL_MSG_PACKET message body (after nlmsghdr). 0 on success. */
static int parse_packet(const unsigned char *m, size_t mlen, struct nzp_batch *b)
{
    const unsigned char *payload = NULL, *ts = NULL, *seq = NULL;
    uint32_t plen = 0, caplen, origlen, sec, usec;
    uint16_t group;
    size_t off;
    uint32_t s = 0;
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
    /* the room check comes before any side effect: a message whose record
     * does not fit is parsed again, whole, once its area has been sent (a
     * record larger than an empty area never fits: malformed) */
    if (payload && NZP_REC_HDR + (size_t)plen > b->cap)
        return -1;
    if (payload && b->nshards > 1) {
        s = nzp_shard_of(payload, plen, b->shard_key, b->nshards);
        if (b->shard_len[s] + NZP_REC_HDR + plen > b->cap) {
            b->blocked_shard = s;
            return NZP_NO_ROOM;
        }
    } else if (payload && b->len + NZP_REC_HDR + plen > b->cap) {
        b->blocked_shard = 0;
        return NZP_NO_ROOM;
    }
    if (seq)
        track_seq(b, group, get_be32(seq));
    if (!payload)
        return 1;               /* metadata-only message: nothing to record */
    if (b->nshards > 1) {
        r = b->shard_out[s] + b->shard_len[s];
        b->shard_len[s] += NZP_REC_HDR + plen;
        b->shard_count[s]++;
    } else {
        r = b->out + b->len;
        b->len += NZP_REC_HDR + plen;
        b->count++;
    }
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
    put_le32(r, sec);
    put_le32(r + 4, usec);
    put_le32(r + 8, caplen);
    put_le32(r + 12, origlen);
    memcpy(r + NZP_REC_HDR, payload, plen);
    b->packets++;
    b->bytes += plen;
    return 0;
}

/* Walk the messages of buf from offset *off on.  Returns the records
 * produced; stops early, *off at the message, when a record does not fit its
 * area (b->blocked_shard says which); *off is buflen when the buffer is done. */
static int walk(const unsigned char *buf, size_t buflen, size_t *offp, struct nzp_batch *b)
{
    size_t off = *offp;
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
            if (rc == NZP_NO_ROOM) {
                *offp = off;
                return produced;
            }
            if (rc == 0)
                produced++;
            else if (rc < 0)
                b->malformed++;
        } else {
            b->other_msgs++;
        }
        off += NLMSG_ALIGN(len);
    }
    *offp = buflen;
    return produced;
}

int nzp_parse(const unsigned char *buf, size_t buflen, struct nzp_batch *b)
{
    size_t off = 0;
    int produced = walk(buf, buflen, &off, b);
    b->malformed += off < buflen;  /* the caller's area was too small */
    return produced;
}

int nzp_read(int fd, unsigned char *rbuf, size_t rbuflen, struct nzp_batch *b,
             int max_recvs)
{
    int i;
    for (i = 0; i < max_recvs; i++) {
        ssize_t n;
        struct timeval tv;
        if (b->pending) {       /* the rest of a buffer that did not fit */
            walk(rbuf, b->pending, &b->pending_off, b);
            if (b->pending_off < b->pending)
                return 1;
            b->pending = b->pending_off = 0;
            continue;
        }
        /* one destination: the area goes out once it holds more than the
         * batch size, i.e. when it might not take a whole buffer */
        if (b->nshards <= 1 && b->cap - b->len < rbuflen) {
            b->blocked_shard = 0;
            return 1;
        }
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
        b->pending_off = 0;
        walk(rbuf, (size_t)n, &b->pending_off, b);
        if (b->pending_off < (size_t)n) {
            b->pending = (size_t)n;
            return 1;
        }
        b->pending_off = 0;
    }
    return 2;
}

uint32_t nzp_shard(const unsigned char *pkt, uint32_t caplen, int key, uint32_t nshards)
{
    return nzp_shard_of(pkt, caplen, key, nshards);
}

uint64_t nzp_hash(const unsigned char *pkt, uint32_t caplen, int key)
{
    return nzp_flow_hash(pkt, caplen, key);
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

int nzp_qthresh_msg(unsigned char *buf, uint16_t group, uint32_t qthresh)
{
    struct nlmsghdr *nh = (struct nlmsghdr *)buf;
    struct nfgenmsg *g;
    struct nlattr *a;
    uint32_t be = htonl(qthresh);
    int len = NLMSG_LENGTH(sizeof(struct nfgenmsg)) + NLA_HDRLEN + 4;

    memset(buf, 0, (size_t)NLMSG_ALIGN(len));
    nh->nlmsg_len = (uint32_t)len;
    nh->nlmsg_type = (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG;
    nh->nlmsg_flags = NLM_F_REQUEST;           /* no NLM_F_ACK: see nflog.h */
    g = (struct nfgenmsg *)NLMSG_DATA(nh);
    g->nfgen_family = AF_UNSPEC;
    g->version = NFNETLINK_V0;
    g->res_id = htons(group);
    a = (struct nlattr *)((unsigned char *)g + NLMSG_ALIGN(sizeof(*g)));
    a->nla_len = NLA_HDRLEN + 4;
    a->nla_type = NFULA_CFG_QTHRESH;
    memcpy((unsigned char *)a + NLA_HDRLEN, &be, 4);
    return len;
}

static int keep_only_net_admin(uint32_t uid, uint32_t gid)
{
    struct __user_cap_header_struct hdr;
    struct __user_cap_data_struct data[2];
    uint32_t bit = 1u << CAP_NET_ADMIN;      /* CAP_NET_ADMIN = 12 < 32 */

    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0)
        return -errno;
    if (setgroups(0, NULL) != 0 || setresgid(gid, gid, gid) != 0 ||
        setresuid(uid, uid, uid) != 0)
        return -errno;
    memset(&hdr, 0, sizeof(hdr));
    memset(data, 0, sizeof(data));
    hdr.version = _LINUX_CAPABILITY_VERSION_3;
    data[0].effective = bit;
    data[0].permitted = bit;
    if (syscall(SYS_capset, &hdr, data) != 0)
        return -errno;
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0)
        return -errno;
    return 0;
}

int nzp_ctl_child(int cmd_fd, int nl_fd, const uint16_t *groups, int ngroups,
                  uint32_t uid, uint32_t gid, uint32_t rcvbuf_max)
{
    struct nzp_ctl_cmd cmd;
    struct sockaddr_nl kernel;
    unsigned char msg[64];
    int rc = keep_only_net_admin(uid, gid);

    if (rc < 0)
        return rc;
    memset(&kernel, 0, sizeof(kernel));
    kernel.nl_family = AF_NETLINK;
    for (;;) {
        ssize_t n = read(cmd_fd, &cmd, sizeof(cmd));
        int i, allowed = 0, len;
        if (n == 0)
            return 0;
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n != (ssize_t)sizeof(cmd))
            return -EPROTO;
        if (cmd.group == NZP_CTL_RCVBUF) {
            int cur = 0, want;
            socklen_t sl = sizeof(cur);
            if (cmd.qthresh > rcvbuf_max || cmd.qthresh > INT_MAX / 2)
                continue;
            want = (int)cmd.qthresh;
            /* the kernel reports twice what was set: only ever grow */
            if (getsockopt(nl_fd, SOL_SOCKET, SO_RCVBUF, &cur, &sl) == 0 && cur / 2 >= want)
                continue;
            setsockopt(nl_fd, SOL_SOCKET, SO_RCVBUFFORCE, &want, sizeof(want));
            continue;
        }
        for (i = 0; i < ngroups; i++)
            if (groups[i] == cmd.group)
                allowed = 1;
        if (!allowed || cmd.qthresh == 0)
            continue;                       /* only the parent's own groups */
        len = nzp_qthresh_msg(msg, (uint16_t)cmd.group, cmd.qthresh);
        if (sendto(nl_fd, msg, (size_t)len, 0, (struct sockaddr *)&kernel,
                   sizeof(kernel)) != (ssize_t)len)
            cmd.qthresh = 0;                /* not applied: the parent is told */
        if (send(cmd_fd, &cmd, sizeof(cmd), MSG_DONTWAIT | MSG_NOSIGNAL) < 0) {
            /* full (the parent reads at its next request) or not a socket: report lost */
        }
    }
}
