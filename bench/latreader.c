/*
 * latreader - latency reader for the benchmark: reads a pcap stream (the
 * receiver's FIFO), finds udpgen's send timestamp in each UDP packet and
 * measures how long after it the record could be read.
 *
 * usage: latreader PCAP_PATH [MAX_SAMPLES]
 *
 * udpgen writes, in the first 16 bytes of each UDP payload, a big-endian
 * sequence number and the CLOCK_REALTIME time (ns) just before the
 * sendmmsg() that sent it.  Each read() of the stream is stamped with
 * CLOCK_REALTIME as soon as it returns; every record completed by that read
 * gets latency = stamp - send time (same host, same clock).  Parsing takes
 * microseconds per read, so the reader itself adds next to nothing.
 *
 * At end of stream (the writer closed) or on SIGINT/SIGTERM it prints one
 * JSON line: record and sample counts, records that carried no timestamp
 * (not IPv4/IPv6 UDP, or too short), and latency percentiles in µs.
 * At most MAX_SAMPLES (default 4 000 000) latencies are kept.
 *
 * It also checks the content end to end: every sequence number below
 * MAX_SAMPLES must arrive exactly once ("seq_distinct", "seq_dup"; a larger
 * one counts as "seq_out_of_range"), and the payload pattern after the
 * first 16 bytes (byte i = i mod 256) must be intact ("pattern_bad").
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BUF_SIZE (8u << 20)

static volatile sig_atomic_t stop_flag;

static void on_signal(int sig)
{
	(void)sig;
	stop_flag = 1;
}

static uint32_t le32(const unsigned char *p)
{
	return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
	       ((uint32_t)p[3] << 24);
}

static uint64_t be64(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = (v << 8) | p[i];
	return v;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return (x > y) - (x < y);
}

/* The UDP payload of a raw IP packet, or NULL. */
static const unsigned char *udp_payload(const unsigned char *d, uint32_t len,
					uint32_t *plen)
{
	uint32_t off;
	if (len >= 20 && (d[0] >> 4) == 4) {
		off = (uint32_t)(d[0] & 15) * 4;
		if (off < 20 || d[9] != 17)
			return NULL;
	} else if (len >= 40 && (d[0] >> 4) == 6) {
		off = 40;
		if (d[6] != 17)
			return NULL;
	} else {
		return NULL;
	}
	off += 8;
	if (len < off)
		return NULL;
	*plen = len - off;
	return d + off;
}

int main(int argc, char **argv)
{
	if (argc < 2 || argc > 3) {
		fprintf(stderr, "usage: %s PCAP_PATH [MAX_SAMPLES]\n", argv[0]);
		return 2;
	}
	size_t max_samples = argc == 3 ? strtoull(argv[2], NULL, 10) : 4000000;
	int64_t *lat = malloc((max_samples ? max_samples : 1) * sizeof(*lat));
	unsigned char *seen = calloc(max_samples / 8 + 1, 1);
	unsigned char *buf = malloc(BUF_SIZE);
	if (!lat || !buf || !seen) {
		fprintf(stderr, "latreader: out of memory\n");
		return 1;
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;          /* no SA_RESTART: read() returns EINTR */
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	int fd = open(argv[1], O_RDONLY);
	if (fd < 0) {
		perror("latreader: open");
		return 1;
	}
	size_t have = 0, n_lat = 0;
	uint64_t records = 0, untimed = 0, headers = 0, reads = 0;
	uint64_t seq_distinct = 0, seq_dup = 0, seq_range = 0, pattern_bad = 0;
	int need_header = 1;
	while (!stop_flag) {
		ssize_t n = read(fd, buf + have, BUF_SIZE - have);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("latreader: read");
			break;
		}
		if (n == 0)
			break;
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		int64_t now = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
		reads++;
		have += (size_t)n;
		size_t off = 0;
		for (;;) {
			if (need_header) {
				if (have - off < 24)
					break;
				if (le32(buf + off) != 0xa1b2c3d4u) {
					fprintf(stderr, "latreader: not a little-endian pcap stream\n");
					return 1;
				}
				off += 24;
				headers++;
				need_header = 0;
				continue;
			}
			if (have - off < 16)
				break;
			uint32_t incl = le32(buf + off + 8);
			if (incl > BUF_SIZE - 16) {
				fprintf(stderr, "latreader: record of %u bytes\n", incl);
				return 1;
			}
			if (have - off < 16 + (size_t)incl)
				break;
			uint32_t plen;
			const unsigned char *p = udp_payload(buf + off + 16, incl, &plen);
			records++;
			if (p && plen >= 16) {
				uint64_t seq = be64(p);
				if (n_lat < max_samples)
					lat[n_lat++] = now - (int64_t)be64(p + 8);
				if (seq >= max_samples) {
					seq_range++;
				} else if (seen[seq / 8] & (1u << (seq % 8))) {
					seq_dup++;
				} else {
					seen[seq / 8] |= (unsigned char)(1u << (seq % 8));
					seq_distinct++;
				}
				for (uint32_t i = 16; i < plen; i++) {
					if (p[i] != (unsigned char)i) {
						pattern_bad++;
						break;
					}
				}
			} else {
				untimed++;
			}
			off += 16 + (size_t)incl;
		}
		memmove(buf, buf + off, have - off);
		have -= off;
	}
	printf("{\"records\":%llu,\"samples\":%zu,\"untimed\":%llu,\"pcap_headers\":%llu,"
	       "\"reads\":%llu,\"partial_bytes\":%zu,\"seq_distinct\":%llu,\"seq_dup\":%llu,"
	       "\"seq_out_of_range\":%llu,\"pattern_bad\":%llu",
	       (unsigned long long)records, n_lat, (unsigned long long)untimed,
	       (unsigned long long)headers, (unsigned long long)reads, have,
	       (unsigned long long)seq_distinct, (unsigned long long)seq_dup,
	       (unsigned long long)seq_range, (unsigned long long)pattern_bad);
	if (n_lat) {
		static const struct { const char *name; double q; } qs[] = {
			{"p50_us", 0.50}, {"p90_us", 0.90}, {"p99_us", 0.99},
			{"p999_us", 0.999},
		};
		double sum = 0;
		qsort(lat, n_lat, sizeof(*lat), cmp_i64);
		for (size_t i = 0; i < n_lat; i++)
			sum += (double)lat[i];
		printf(",\"min_us\":%.1f,\"mean_us\":%.1f", lat[0] / 1e3, sum / n_lat / 1e3);
		for (size_t i = 0; i < sizeof(qs) / sizeof(qs[0]); i++) {
			size_t k = (size_t)(qs[i].q * (double)(n_lat - 1) + 0.5);
			printf(",\"%s\":%.1f", qs[i].name, lat[k] / 1e3);
		}
		printf(",\"max_us\":%.1f", lat[n_lat - 1] / 1e3);
	}
	printf("}\n");
	fflush(stdout);
	return 0;
}
