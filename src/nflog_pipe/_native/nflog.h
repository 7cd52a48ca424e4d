/*
 * Declarations shared by the C helpers and the cffi build (cdef).
 * Everything in this file must be parseable by cffi's cdef parser:
 * no preprocessor logic, no inline functions.
 *
 * A "record area" is a sequence of pcap records exactly as they appear in a
 * little-endian, microsecond pcap file (LINKTYPE_RAW):
 *     u32 ts_sec, u32 ts_usec, u32 caplen, u32 origlen, caplen bytes of data
 * The sender produces record areas in C, frames carry them, and the receiver
 * writes them to its output without touching individual packets in Python.
 */

/* the record header size, NZP_REC_HDR: record.h */
#define NZP_MAX_GROUPS 32
#define NZP_MAX_SHARDS 16

struct nzp_batch {
    /* output: record area, written from out[len] on */
    unsigned char *out;
    size_t cap;
    size_t len;
    uint32_t count;          /* records in out */
    /* time used for packets without a kernel timestamp (set per recv) */
    uint32_t now_sec;
    uint32_t now_usec;
    /* cumulative counters, never reset by C */
    uint64_t packets;        /* records produced */
    uint64_t bytes;          /* captured bytes of those records */
    uint64_t seq_lost;       /* packets the kernel dropped, from NFULA_SEQ gaps */
    uint64_t enobufs;        /* ENOBUFS events on the socket */
    uint64_t nl_errors;      /* NLMSG_ERROR messages received */
    uint64_t malformed;      /* netlink messages that failed validation */
    uint64_t other_msgs;     /* well-formed messages that were not packets */
    uint64_t recvs;          /* successful recv() calls */
    uint64_t no_timestamp;   /* packets that carried no kernel timestamp */
    /* per-group NFULA_SEQ tracking */
    int ngroups;
    uint16_t groups[32];
    uint32_t next_seq[32];
    uint8_t have_seq[32];
    /* flow sharding (nflog-zmq-send with several destinations): with
     * nshards > 1 each record goes to the record area of its shard,
     * shard_out[s] (capacity cap each), chosen by the symmetric flow hash of
     * flowhash.h with key `shard_key`; out/len/count are then unused.
     * With nshards <= 1 nothing of this is touched (the one-destination path). */
    uint32_t nshards;
    int shard_key;
    unsigned char *shard_out[16];
    size_t shard_len[16];
    uint32_t shard_count[16];
    /* a buffer whose records did not all fit: rbuf holds `pending` bytes,
     * walked up to `pending_off`; the next nzp_read goes on from there, once
     * the caller has sent the area that had no room (`blocked_shard`) */
    size_t pending;
    size_t pending_off;
    uint32_t blocked_shard;
};

/* The shard (0..nshards-1) of one IP packet; the same function the walker and
 * the receiver's splitter use (tests, documentation). */
uint32_t nzp_shard(const unsigned char *pkt, uint32_t caplen, int key, uint32_t nshards);
uint64_t nzp_hash(const unsigned char *pkt, uint32_t caplen, int key);

/* Walk one netlink buffer and append a record per NFLOG packet message.
 * The caller guarantees cap - len >= buflen (a record is never larger than the
 * netlink message it came from).  Returns the number of records appended. */
int nzp_parse(const unsigned char *buf, size_t buflen, struct nzp_batch *b);

/* recv() from a non-blocking netlink socket and parse, until the socket is
 * drained (returns 0), an area must go out (returns 1: with one destination
 * when it holds more than cap - rbuflen bytes, before the next recv; with
 * shards when a record does not fit its shard's area, `blocked_shard`: the
 * rest of that buffer stays pending and the next call goes on with it, so a
 * shard's area fills up to its capacity), max_recvs buffers were read
 * (returns 2), or an error other than EAGAIN/EINTR/ENOBUFS occurs (returns
 * -errno). */
int nzp_read(int fd, unsigned char *rbuf, size_t rbuflen, struct nzp_batch *b,
             int max_recvs);

/* Clear the calling thread's capability sets (effective, permitted,
 * inheritable) and set no_new_privs.  Returns 0 or -errno. */
int nzp_drop_caps(void);

/* Privilege separation for run-time kernel settings.
 *
 * Changing an NFLOG group's settings needs CAP_NET_ADMIN at the moment the
 * message is sent, and must come from the socket that bound the group;
 * growing the socket's receive buffer past the system limit
 * (SO_RCVBUFFORCE) needs it too.  The sender forks a child before dropping
 * its own privileges; the child keeps only CAP_NET_ADMIN (as uid/gid, when
 * not 0), shares the bound netlink socket, and does two things with the
 * commands the parent writes to cmd_fd as struct nzp_ctl_cmd:
 * - apply a queue threshold to one of the groups it was given, sent without
 *   NLM_F_ACK so that no reply lands among the parent's packets;
 * - with group NZP_CTL_RCVBUF: set the receive buffer to `qthresh` bytes,
 *   only upwards and at most rcvbuf_max.
 * cmd_fd is one end of a stream socketpair: for each queue threshold sent, the
 * child writes back a struct nzp_ctl_cmd (non-blocking: a full socket loses the
 * report, never blocks): the group, and qthresh when sendto() took the whole
 * message, else 0.
 * It returns when cmd_fd reaches end of file (the parent is gone), or -errno. */
#define NZP_CTL_RCVBUF 4294967295
struct nzp_ctl_cmd {
    uint32_t group;
    uint32_t qthresh;
};

int nzp_ctl_child(int cmd_fd, int nl_fd, const uint16_t *groups, int ngroups,
                  uint32_t uid, uint32_t gid, uint32_t rcvbuf_max);

/* Build the NFULNL_MSG_CONFIG message that sets a group's queue threshold
 * into buf (at least 64 bytes).  Returns its length. */
int nzp_qthresh_msg(unsigned char *buf, uint16_t group, uint32_t qthresh);
