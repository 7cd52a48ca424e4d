/*
 * udpgen - small UDP traffic generator for the NFLOG reader benchmark.
 *
 * usage: udpgen ADDR PORT SIZE RATE COUNT MAXSECS [BATCH [FLOWS]]
 *
 *   ADDR     destination IPv4 or IPv6 address (numeric)
 *   PORT     destination UDP port
 *   SIZE     UDP payload size in bytes (16..65507)
 *   RATE     target rate in packets/s, 0 = as fast as possible
 *   COUNT    number of packets to send (hard bound)
 *   MAXSECS  maximum duration in seconds (hard bound, may be fractional)
 *   BATCH    packets per sendmmsg() call (default 32, max 1024)
 *   FLOWS    destination ports PORT..PORT+FLOWS-1 in turn (default 1, max 64):
 *            that many flows, for the sharded sender's benchmark
 *
 * Payload layout (so that a receiver-side tool can compute loss/latency):
 *   bytes 0..7   sequence number, uint64, big-endian, starting at 0
 *   bytes 8..15  CLOCK_REALTIME send time in ns, uint64, big-endian
 *   bytes 16..   pattern: byte i = (uint8_t)i
 *
 * Pacing: one batch every BATCH/RATE seconds against CLOCK_MONOTONIC
 * (clock_nanosleep TIMER_ABSTIME).  A sender that falls behind catches up
 * by at most 100 ms worth of packets, then the schedule is reset.
 *
 * At exit (count reached, time bound, SIGINT/SIGTERM) it prints one JSON line:
 *   {"sent":N,"elapsed_s":S,"pps":P,"errors":E,"size":SIZE,"rate":RATE}
 * "errors" counts failed sendmmsg() calls (their packets are not counted as
 * sent).  The socket is not connected, so ICMP errors never fail a send.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_BATCH 1024

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
	(void)sig;
	stop_flag = 1;
}

static uint64_t now_ns(clockid_t clk)
{
	struct timespec ts;

	clock_gettime(clk, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void put_be64(unsigned char *p, uint64_t v)
{
	for (int i = 7; i >= 0; i--) {
		p[i] = (unsigned char)(v & 0xff);
		v >>= 8;
	}
}

static int parse_ll(const char *s, long long lo, long long hi, long long *out)
{
	char *end;

	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (errno || *end || end == s || v < lo || v > hi)
		return -1;
	*out = v;
	return 0;
}

static void usage(const char *prog)
{
	fprintf(stderr,
		"usage: %s ADDR PORT SIZE RATE COUNT MAXSECS [BATCH]\n"
		"  RATE 0 = as fast as possible; COUNT and MAXSECS both bound the run\n",
		prog);
	exit(2);
}

int main(int argc, char **argv)
{
	struct sockaddr_storage dst;
	socklen_t dstlen;
	long long port, size, rate, count, batch = 32, flows = 1;
	double maxsecs;
	char *end;

	if (argc < 7 || argc > 9)
		usage(argv[0]);
	memset(&dst, 0, sizeof(dst));
	if (parse_ll(argv[2], 1, 65535, &port) ||
	    parse_ll(argv[3], 16, 65507, &size) ||
	    parse_ll(argv[4], 0, 100000000, &rate) ||
	    parse_ll(argv[5], 0, (long long)1 << 48, &count) ||
	    (argc >= 8 && parse_ll(argv[7], 1, MAX_BATCH, &batch)) ||
	    (argc == 9 && parse_ll(argv[8], 1, 64, &flows)))
		usage(argv[0]);
	maxsecs = strtod(argv[6], &end);
	if (*end || end == argv[6] || !(maxsecs > 0) || maxsecs > 86400)
		usage(argv[0]);

	struct sockaddr_in *s4 = (struct sockaddr_in *)&dst;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&dst;
	if (inet_pton(AF_INET, argv[1], &s4->sin_addr) == 1) {
		s4->sin_family = AF_INET;
		s4->sin_port = htons((uint16_t)port);
		dstlen = sizeof(*s4);
	} else if (inet_pton(AF_INET6, argv[1], &s6->sin6_addr) == 1) {
		s6->sin6_family = AF_INET6;
		s6->sin6_port = htons((uint16_t)port);
		dstlen = sizeof(*s6);
	} else {
		fprintf(stderr, "udpgen: bad address %s\n", argv[1]);
		return 2;
	}

	int fd = socket(dst.ss_family, SOCK_DGRAM, 0);
	if (fd < 0) {
		perror("udpgen: socket");
		return 1;
	}
	int sndbuf = 4 << 20;
	if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &sndbuf, sizeof(sndbuf)) < 0)
		(void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	unsigned char *bufs = malloc((size_t)batch * (size_t)size);
	struct mmsghdr *msgs = calloc((size_t)batch, sizeof(*msgs));
	struct iovec *iovs = calloc((size_t)batch, sizeof(*iovs));
	struct sockaddr_storage *dsts = calloc((size_t)batch, sizeof(*dsts));
	if (!bufs || !msgs || !iovs || !dsts) {
		fprintf(stderr, "udpgen: out of memory\n");
		return 1;
	}
	for (long long i = 0; i < batch; i++) {
		unsigned char *b = bufs + i * size;
		for (long long j = 16; j < size; j++)
			b[j] = (unsigned char)j;
		iovs[i].iov_base = b;
		iovs[i].iov_len = (size_t)size;
		dsts[i] = dst;
		if (dst.ss_family == AF_INET)
			((struct sockaddr_in *)&dsts[i])->sin_port = htons((uint16_t)(port + i % flows));
		else
			((struct sockaddr_in6 *)&dsts[i])->sin6_port = htons((uint16_t)(port + i % flows));
		msgs[i].msg_hdr.msg_name = &dsts[i];
		msgs[i].msg_hdr.msg_namelen = dstlen;
		msgs[i].msg_hdr.msg_iov = &iovs[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}

	uint64_t sent = 0, errors = 0, seq = 0;
	const uint64_t t0 = now_ns(CLOCK_MONOTONIC);
	const uint64_t tmax = t0 + (uint64_t)(maxsecs * 1e9);
	const uint64_t interval = rate ? (uint64_t)(1e9 * (double)batch / (double)rate) : 0;
	const uint64_t max_lag = 100000000ull; /* 100 ms */
	uint64_t next = t0;
	uint64_t now = t0;

	while (!stop_flag && sent < (uint64_t)count) {
		now = now_ns(CLOCK_MONOTONIC);
		if (now >= tmax)
			break;
		if (rate) {
			if (now < next) {
				struct timespec ts = {
					.tv_sec = (time_t)(next / 1000000000ull),
					.tv_nsec = (long)(next % 1000000000ull),
				};
				if (next > tmax)
					break;
				clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
				continue; /* re-check stop flag and time bound */
			}
			if (now - next > max_lag)
				next = now;
			next += interval;
		}
		uint64_t n = (uint64_t)count - sent;
		if (n > (uint64_t)batch)
			n = (uint64_t)batch;
		for (uint64_t i = 0; i < n; i++) {
			unsigned char *b = bufs + i * (uint64_t)size;
			put_be64(b, seq + i);
			put_be64(b + 8, now_ns(CLOCK_REALTIME));
		}
		int r = sendmmsg(fd, msgs, (unsigned int)n, 0);
		if (r < 0) {
			if (errno != EINTR)
				errors++;
			continue;
		}
		/* a partial send: the unsent tail is re-stamped and retried */
		sent += (uint64_t)r;
		seq += (uint64_t)r;
	}
	now = now_ns(CLOCK_MONOTONIC);
	double elapsed = (double)(now - t0) / 1e9;
	printf("{\"sent\":%llu,\"elapsed_s\":%.6f,\"pps\":%.1f,\"errors\":%llu,"
	       "\"size\":%lld,\"rate\":%lld}\n",
	       (unsigned long long)sent, elapsed,
	       elapsed > 0 ? (double)sent / elapsed : 0.0,
	       (unsigned long long)errors, size, rate);
	fflush(stdout);
	close(fd);
	free(bufs);
	free(msgs);
	free(iovs);
	return 0;
}
