/*
 * cref - minimal batched libnetfilter_log reader: the benchmark's floor.
 *
 * usage: cref GROUP [RCVBUF_BYTES [NLBUFSIZ [QTHRESH [TIMEOUT_10MS]]]]
 *
 * Defaults: RCVBUF 16 MiB (SO_RCVBUFFORCE, falls back to SO_RCVBUF),
 * NLBUFSIZ 131072 (the kernel's maximum batch), QTHRESH 1024 packets,
 * TIMEOUT 1 (10 ms).  Copy mode: whole packet (0xffff).  NFULNL_CFG_F_SEQ is
 * set so that kernel-side losses can be counted from sequence gaps.
 *
 * One recv() per kernel batch into a 512 KiB buffer; nflog_handle_packet()
 * walks every message of the batch; the callback counts packets and bytes and
 * touches the payload.  On SIGTERM/SIGINT it prints one JSON line and exits:
 *   {"packets":N,"bytes":B,"batches":R,"enobufs":E,"seq_lost":L,"rcvbuf":X}
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <libnetfilter_log/libnetfilter_log.h>

#define RECV_BUF (512 * 1024)

struct stats {
	uint64_t packets, bytes, batches, enobufs, seq_lost;
	uint32_t last_seq;
	int have_seq;
	uint8_t sink;
};

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
	(void)sig;
	stop_flag = 1;
}

static int cb(struct nflog_g_handle *gh, struct nfgenmsg *nfmsg,
	      struct nflog_data *nfa, void *data)
{
	struct stats *st = data;
	char *payload;
	uint32_t seq;
	int len;

	(void)gh;
	(void)nfmsg;
	len = nflog_get_payload(nfa, &payload);
	if (len > 0) {
		st->bytes += (uint64_t)len;
		st->sink ^= (uint8_t)payload[len - 1];
	}
	if (nflog_get_seq(nfa, &seq) == 0) {
		if (st->have_seq && seq != st->last_seq + 1)
			st->seq_lost += (uint32_t)(seq - st->last_seq - 1);
		st->last_seq = seq;
		st->have_seq = 1;
	}
	st->packets++;
	return 0;
}

static long arg(int argc, char **argv, int i, long def)
{
	return argc > i ? strtol(argv[i], NULL, 0) : def;
}

int main(int argc, char **argv)
{
	struct stats st;
	struct sigaction sa;

	if (argc < 2) {
		fprintf(stderr, "usage: %s GROUP [RCVBUF [NLBUFSIZ [QTHRESH [TIMEOUT]]]]\n",
			argv[0]);
		return 2;
	}
	int group = (int)arg(argc, argv, 1, 0);
	int rcvbuf = (int)arg(argc, argv, 2, 16 << 20);
	long nlbufsiz = arg(argc, argv, 3, 131072);
	long qthresh = arg(argc, argv, 4, 1024);
	long timeout = arg(argc, argv, 5, 1);

	memset(&st, 0, sizeof(st));
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal; /* no SA_RESTART: recv() returns EINTR */
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	struct nflog_handle *h = nflog_open();
	if (!h) {
		perror("cref: nflog_open");
		return 1;
	}
	struct nflog_g_handle *gh = nflog_bind_group(h, (uint16_t)group);
	if (!gh) {
		perror("cref: nflog_bind_group");
		return 1;
	}
	if (nflog_set_mode(gh, NFULNL_COPY_PACKET, 0xffff) < 0)
		perror("cref: nflog_set_mode");
	if (nflog_set_nlbufsiz(gh, (uint32_t)nlbufsiz) < 0)
		perror("cref: nflog_set_nlbufsiz");
	if (nflog_set_qthresh(gh, (uint32_t)qthresh) < 0)
		perror("cref: nflog_set_qthresh");
	if (nflog_set_timeout(gh, (uint32_t)timeout) < 0)
		perror("cref: nflog_set_timeout");
	if (nflog_set_flags(gh, NFULNL_CFG_F_SEQ) < 0)
		perror("cref: nflog_set_flags");
	nflog_callback_register(gh, cb, &st);

	int fd = nflog_fd(h);
	if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof(rcvbuf)) < 0) {
		perror("cref: SO_RCVBUFFORCE (falling back to SO_RCVBUF)");
		setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	}
	int got = 0;
	socklen_t gl = sizeof(got);
	getsockopt(fd, SOL_SOCKET, SO_RCVBUF, &got, &gl);

	char *buf = malloc(RECV_BUF);
	if (!buf)
		return 1;
	fprintf(stderr, "cref: ready group=%d rcvbuf=%d nlbufsiz=%ld qthresh=%ld timeout=%ld\n",
		group, got, nlbufsiz, qthresh, timeout);

	while (!stop_flag) {
		ssize_t n = recv(fd, buf, RECV_BUF, 0);
		if (n < 0) {
			if (errno == ENOBUFS)
				st.enobufs++;
			else if (errno != EINTR) {
				perror("cref: recv");
				break;
			}
			continue;
		}
		st.batches++;
		nflog_handle_packet(h, buf, (int)n);
	}

	printf("{\"packets\":%llu,\"bytes\":%llu,\"batches\":%llu,\"enobufs\":%llu,"
	       "\"seq_lost\":%llu,\"rcvbuf\":%d,\"x\":%u}\n",
	       (unsigned long long)st.packets, (unsigned long long)st.bytes,
	       (unsigned long long)st.batches, (unsigned long long)st.enobufs,
	       (unsigned long long)st.seq_lost, got, st.sink);
	fflush(stdout);
	nflog_unbind_group(gh);
	nflog_close(h);
	free(buf);
	return 0;
}
