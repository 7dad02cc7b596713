// SPDX-License-Identifier: GPL-2.0
/*
 * module_test - tests of tether.ko, run as root inside a tests/vm VM with
 * the module loaded.  The process under test is the exporter; a forked
 * child plays the daemon ("fake daemon"): it opens its own control fd,
 * receives exporter fds over SCM_RIGHTS, marks ranges, reads events with
 * poll/read and acks them after a configurable delay.  It must be another
 * process: the daemon may not touch the exporter's mm while the exporter
 * waits for it (G5), and a thread shares the mm.
 *
 * Output: one "PASS name" or "FAIL name: why" per check, "INFO ..." lines,
 * and a final "N passed, N failed".  Exit 0 iff nothing failed.
 * TETHER_TEST_SCALE (default 1) multiplies every upper time bound.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <setjmp.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/tether.h>

_Static_assert(sizeof(struct tether_event) == 72, "event ABI");
_Static_assert(sizeof(struct tether_range_reg) == 32, "reg ABI");
_Static_assert(sizeof(struct tether_attach) == 24, "attach ABI");
_Static_assert(sizeof(struct tether_mark) == 32, "mark ABI");
_Static_assert(sizeof(struct tether_direct) == 32, "direct ABI");

static long P;
static double scale = 1.0;
static int npass, nfail;

static double now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static void pass(const char *name)
{
	printf("PASS %s\n", name);
	fflush(stdout);
	npass++;
}

static void __attribute__((format(printf, 2, 3))) fail(const char *name, const char *fmt, ...)
{
	va_list ap;

	printf("FAIL %s: ", name);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
	nfail++;
}

static void __attribute__((format(printf, 1, 2))) info(const char *fmt, ...)
{
	va_list ap;

	printf("INFO ");
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	printf("\n");
	fflush(stdout);
}

static const char *type_name(unsigned int t)
{
	static const char *const n[] = { "NONE", "UNMAP", "CLEAR", "PROTECTION_VMA",
		"PROTECTION_PAGE", "SOFT_DIRTY", "RELEASE", "MIGRATE", "EXCLUSIVE" };
	if (t < sizeof(n) / sizeof(n[0]))
		return n[t];
	return t == TETHER_EV_OTHER ? "OTHER" : "?";
}

static const char *kind_name(unsigned int k)
{
	switch (k) {
	case TETHER_KIND_BEGIN: return "BEGIN";
	case TETHER_KIND_END: return "END";
	case TETHER_KIND_RELEASE: return "RELEASE";
	case TETHER_KIND_OVERFLOW: return "OVERFLOW";
	default: return "?";
	}
}

/* ------------------------------------------------------------------ */
/* fd passing                                                          */

static int send_msg(int sock, const void *buf, size_t len, int fd)
{
	struct iovec iov = { (void *)buf, len };
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };

	if (fd >= 0) {
		struct cmsghdr *c;

		memset(cbuf, 0, sizeof(cbuf));
		mh.msg_control = cbuf;
		mh.msg_controllen = sizeof(cbuf);
		c = CMSG_FIRSTHDR(&mh);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &fd, sizeof(int));
	}
	return sendmsg(sock, &mh, 0) == (ssize_t)len ? 0 : -1;
}

static ssize_t recv_msg(int sock, void *buf, size_t len, int *fd)
{
	struct iovec iov = { buf, len };
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1,
			     .msg_control = cbuf, .msg_controllen = sizeof(cbuf) };
	struct cmsghdr *c;
	ssize_t n;

	if (fd)
		*fd = -1;
	n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC);
	if (n <= 0)
		return n;
	for (c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && fd)
			memcpy(fd, CMSG_DATA(c), sizeof(int));
	return n;
}

/* ------------------------------------------------------------------ */
/* fake daemon                                                         */

enum {
	D_ATTACH = 1, D_MARK, D_UNMARK, D_ACKDELAY, D_CLOSE_AFTER, D_REOPEN,
	D_EVENTS, D_CLEAR, D_RETRY, D_INFO, D_QUIT, D_PAUSE, D_ACKNOW, D_DIRECT,
	D_CLOSEFD, D_WRITE,
};

struct dcmd {
	int64_t op, a, b, c, d;
};

struct dreply {
	int64_t ret;	/* 0 or -1 */
	int64_t err;	/* errno */
	uint64_t v, v2, v3;
};

struct rec {
	struct tether_event ev;
	double t_recv;
	double t_ack;	/* 0: not acked */
};

#define MAXREC 8192
#define CHUNK 64

static void daemon_main(int sock)
{
	static struct rec log[MAXREC];
	static struct { uint64_t id; double due; int idx; } acks[MAXREC];
	int nlog = 0, nacks = 0, ctl;
	int64_t ackdelay = 0, close_after = -1;
	double close_due = 0;
	int paused = 0;		/* D_PAUSE: leave events unread in the kernel */

	ctl = open(TETHER_DEVICE, O_RDWR | O_CLOEXEC | O_NONBLOCK);
	if (ctl < 0 || ioctl(ctl, TETHER_IOC_CONTROL)) {
		perror("daemon: control fd");
		_exit(3);
	}
	for (;;) {
		struct pollfd pfd[2] = { { sock, POLLIN, 0 }, { ctl, POLLIN, 0 } };
		double t = now_ms(), next = t + 1000;
		int i, timeout;

		for (i = 0; i < nacks; i++)
			if (acks[i].due < next)
				next = acks[i].due;
		if (close_due && close_due < next)
			next = close_due;
		timeout = next > t ? (int)(next - t) + 1 : 0;
		if (poll(pfd, ctl >= 0 && !paused ? 2 : 1, timeout) < 0 && errno != EINTR)
			_exit(4);

		/* due acks and close */
		t = now_ms();
		for (i = 0; i < nacks; i++) {
			if (acks[i].due > t)
				continue;
			if (ctl >= 0) {
				struct tether_ack a = { .event_id = acks[i].id };

				log[acks[i].idx].t_ack = now_ms();
				ioctl(ctl, TETHER_IOC_ACK, &a);
			}
			acks[i--] = acks[--nacks];
		}
		if (close_due && close_due <= t && ctl >= 0) {
			close(ctl);
			ctl = -1;
			close_due = 0;
			nacks = 0;
		}

		if (ctl >= 0 && !paused && (pfd[1].revents & POLLIN)) {
			struct tether_event ev[32];
			ssize_t n = read(ctl, ev, sizeof(ev));

			for (i = 0; n > 0 && i < n / (ssize_t)sizeof(ev[0]); i++) {
				struct rec *r;

				if (nlog >= MAXREC)
					break;
				r = &log[nlog];
				r->ev = ev[i];
				r->t_recv = now_ms();
				r->t_ack = 0;
				if ((ev[i].kind == TETHER_KIND_BEGIN ||
				     ev[i].kind == TETHER_KIND_RELEASE ||
				     ev[i].kind == TETHER_KIND_OVERFLOW) &&
				    ackdelay >= 0 && nacks < MAXREC) {
					acks[nacks].id = ev[i].event_id;
					acks[nacks].due = r->t_recv + ackdelay;
					acks[nacks].idx = nlog;
					nacks++;
				}
				if (ev[i].kind == TETHER_KIND_BEGIN && close_after >= 0 &&
				    !close_due) {
					close_due = r->t_recv + close_after;
					close_after = -1;
				}
				nlog++;
			}
			continue;	/* ack without delay before serving commands */
		}

		if (pfd[0].revents & (POLLIN | POLLHUP)) {
			struct dcmd c;
			struct dreply r = { 0 };
			int fd = -1;
			ssize_t n = recv_msg(sock, &c, sizeof(c), &fd);

			if (n <= 0)
				_exit(0);
			switch (c.op) {
			case D_ATTACH: {
				struct tether_attach a = { .fd = fd };

				r.ret = ioctl(ctl, TETHER_IOC_ATTACH, &a);
				r.err = errno;
				r.v = a.exporter_id;
				r.v2 = (uint64_t)fd;	/* for D_CLOSEFD */
				/* keep fd open, as tetherd does: closing the last
				 * reference of an exporter fd ends the export */
				break;
			}
			case D_CLOSEFD:	/* close an exporter fd D_ATTACH kept */
				r.ret = close((int)c.a);
				r.err = errno;
				break;
			case D_MARK:
			case D_UNMARK: {
				struct tether_mark m = { .range_id = c.a, .offset = c.b, .len = c.c };

				r.ret = ioctl(ctl, c.op == D_MARK ? TETHER_IOC_MARK_CACHED :
					      TETHER_IOC_UNMARK_CACHED, &m);
				r.err = errno;
				r.v = m.seq;
				break;
			}
			case D_RETRY: {
				struct tether_seq s = { .range_id = c.a, .seq = c.b };

				r.ret = ioctl(ctl, TETHER_IOC_READ_RETRY, &s);
				r.err = errno;
				break;
			}
			case D_INFO: {
				struct tether_range_info ri = { .range_id = c.a };

				r.ret = ioctl(ctl, TETHER_IOC_RANGE_INFO, &ri);
				r.err = errno;
				r.v = ri.exporter_id;
				r.v2 = ri.start;
				r.v3 = ri.len;
				break;
			}
			case D_ACKDELAY:
				ackdelay = c.a;
				break;
			case D_CLOSE_AFTER:
				close_after = c.a;
				break;
			case D_PAUSE:
				paused = (int)c.a;
				break;
			case D_ACKNOW: {	/* ack event c.a now (0: every one not acked) */
				int k;

				r.ret = -1;
				r.err = ENOENT;
				for (k = 0; k < nlog && ctl >= 0; k++) {
					struct tether_ack a = { .event_id = log[k].ev.event_id };

					if (log[k].t_ack || (c.a && log[k].ev.event_id != (uint64_t)c.a) ||
					    log[k].ev.kind == TETHER_KIND_END)
						continue;
					log[k].t_ack = now_ms();
					r.ret = ioctl(ctl, TETHER_IOC_ACK, &a);
					r.err = errno;
				}
				break;
			}
			case D_REOPEN:
				if (ctl >= 0)
					close(ctl);
				nacks = 0;
				close_due = 0;
				ctl = open(TETHER_DEVICE, O_RDWR | O_CLOEXEC | O_NONBLOCK);
				r.ret = ctl < 0 ? -1 : ioctl(ctl, TETHER_IOC_CONTROL);
				r.err = errno;
				break;
			case D_CLEAR:
				nlog = 0;
				nacks = 0;
				break;
			case D_EVENTS: {
				int k;

				r.v = nlog;
				send_msg(sock, &r, sizeof(r), -1);
				for (k = 0; k < nlog; k += CHUNK) {
					int m = nlog - k < CHUNK ? nlog - k : CHUNK;

					send_msg(sock, &log[k], m * sizeof(log[0]), -1);
				}
				continue;
			}
			case D_DIRECT: {	/* DIRECT_ATTACH; the new fd goes back */
				struct tether_direct dr = { .range_id = c.a, .offset = c.b,
							    .len = c.c, .flags = (uint32_t)c.d,
							    .fd = -1 };

				r.ret = ioctl(ctl, TETHER_IOC_DIRECT_ATTACH, &dr);
				r.err = errno;
				if (fd >= 0)
					close(fd);
				send_msg(sock, &r, sizeof(r), r.ret ? -1 : dr.fd);
				if (!r.ret)
					close(dr.fd);
				continue;
			}
			case D_WRITE: {	/* WRITE; see dwrite() for c.c's bits */
				static char wbuf[(1 << 20) + 8192];
				struct tether_write_seg sg[2];
				struct tether_write w = { .range_id = c.a, .seq = c.d,
							  .segs = (uintptr_t)sg, .nr_segs = 1 };
				uint64_t len = c.c & 0xffffffffull;
				int mode = (int)((c.c >> 32) & 0xff);

				memset(wbuf, (int)((c.c >> 40) & 0xff), sizeof(wbuf));
				sg[0].offset = c.b;
				sg[0].len = len;
				sg[0].buf = (uintptr_t)wbuf;
				sg[1] = sg[0];
				sg[1].offset = c.b + len + 1;
				if (mode == 1)
					w.flags = 1;
				else if (mode == 2)
					w.nr_segs = 0;
				else if (mode == 3)
					sg[0].buf = 1;	/* unreadable */
				else if (mode == 4)
					w.segs = 1;
				else if (mode == 5)
					w.nr_segs = TETHER_WRITE_MAX_SEGS + 1;
				else if (mode == 6)
					w.nr_segs = 2;
				else if (mode == 7)
					w.written = 12345;	/* must be overwritten */
				r.ret = ioctl(ctl, TETHER_IOC_WRITE, &w);
				r.err = errno;
				r.v = w.written;
				break;
			}
			case D_QUIT:
				_exit(0);
			}
			if (fd >= 0 && c.op != D_ATTACH)
				close(fd);
			send_msg(sock, &r, sizeof(r), -1);
		}
	}
}

static int dsock = -1;
static pid_t dpid;

static struct dreply dcall(int64_t op, int64_t a, int64_t b, int64_t c, int fd)
{
	struct dcmd cmd = { op, a, b, c, 0 };
	struct dreply r = { .ret = -1, .err = EPIPE };

	if (send_msg(dsock, &cmd, sizeof(cmd), fd) ||
	    recv_msg(dsock, &r, sizeof(r), NULL) != sizeof(r)) {
		fail("daemon", "lost the fake daemon (op %lld): %s", (long long)op,
		     strerror(errno));
		exit(1);
	}
	return r;
}

static struct rec evs[MAXREC];

static int devents(void)
{
	struct dreply r = dcall(D_EVENTS, 0, 0, 0, -1);
	int n = (int)r.v, k = 0;

	while (k < n) {
		ssize_t got = recv_msg(dsock, &evs[k], CHUNK * sizeof(evs[0]), NULL);

		if (got <= 0) {
			fail("daemon", "event transfer broke");
			exit(1);
		}
		k += got / sizeof(evs[0]);
	}
	return n;
}

static void start_daemon(void)
{
	int sv[2];

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv)) {
		perror("socketpair");
		exit(1);
	}
	dpid = fork();
	if (dpid == 0) {
		close(sv[0]);
		daemon_main(sv[1]);
		_exit(0);
	}
	close(sv[1]);
	dsock = sv[0];
}

/* ------------------------------------------------------------------ */
/* exporter helpers                                                    */

static int efd = -1;		/* this process's exporter fd */

static char *map_pages(int n)
{
	char *p = mmap(NULL, n * P, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	memset(p, 0x5a, n * P);
	return p;
}

static uint64_t reg_range(int fd, void *start, size_t len)
{
	struct tether_range_reg r = { .start = (uintptr_t)start, .len = len };

	if (ioctl(fd, TETHER_IOC_REGISTER_RANGE, &r)) {
		fail("register", "REGISTER_RANGE(%p, %zu): %s", start, len, strerror(errno));
		return 0;
	}
	return r.range_id;
}

static int dmark(uint64_t rid, size_t off, size_t len)
{
	struct dreply r = dcall(D_MARK, rid, off, len, -1);

	if (r.ret) {
		fail("mark", "MARK_CACHED(range %llu): %s", (unsigned long long)rid,
		     strerror(r.err));
		return -1;
	}
	return 0;
}

/* find the first event matching; returns index or -1 */
static int find_ev(int n, uint64_t rid, unsigned int kind, uint64_t off, uint64_t end)
{
	int i;

	for (i = 0; i < n; i++)
		if (evs[i].ev.range_id == rid && evs[i].ev.kind == kind &&
		    evs[i].ev.start < end && evs[i].ev.end > off)
			return i;
	return -1;
}

static int count_ev(int n, uint64_t rid, unsigned int kind)
{
	int i, c = 0;

	for (i = 0; i < n; i++)
		if (evs[i].ev.range_id == rid && evs[i].ev.kind == kind)
			c++;
	return c;
}

static void dump_events(int n)
{
	int i;

	for (i = 0; i < n && i < 12; i++)
		info("  event id=%llu exp=%llu range=%llu [%#llx,%#llx) %s %s flags=%u recv=%.1f ack=%.1f",
		     (unsigned long long)evs[i].ev.event_id,
		     (unsigned long long)evs[i].ev.exporter_id,
		     (unsigned long long)evs[i].ev.range_id,
		     (unsigned long long)evs[i].ev.start,
		     (unsigned long long)evs[i].ev.end, kind_name(evs[i].ev.kind),
		     type_name(evs[i].ev.type), evs[i].ev.flags, evs[i].t_recv,
		     evs[i].t_ack);
}

/*
 * Polls the fake daemon's log until it holds @count events of @kind for
 * @rid (a condition, not a guess at timing).  Returns the number of
 * events in evs[], or -1 after @timeout_ms.
 */
static int wait_ev(uint64_t rid, unsigned int kind, int count, double timeout_ms)
{
	double end = now_ms() + timeout_ms * scale;
	int n;

	do {
		n = devents();
		if (count_ev(n, rid, kind) >= count)
			return n;
		usleep(5000);
	} while (now_ms() < end);
	return -1;
}

/* the index of the @k-th event (0-based) of @kind for @rid, or -1 */
static int nth_ev(int n, uint64_t rid, unsigned int kind, int k)
{
	int i;

	for (i = 0; i < n; i++)
		if (evs[i].ev.range_id == rid && evs[i].ev.kind == kind && k-- == 0)
			return i;
	return -1;
}

static int set_timeout_ms(unsigned int ms)
{
	FILE *f = fopen("/sys/module/tether/parameters/ack_timeout_ms", "w");

	if (!f)
		return -1;
	fprintf(f, "%u\n", ms);
	return fclose(f);
}

/* ------------------------------------------------------------------ */
/* (a) blocking BEGIN for munmap/madvise/mremap/mprotect               */

enum op { OP_MUNMAP, OP_MADVISE, OP_MREMAP, OP_MPROTECT };

static int do_op(enum op op, char *p, size_t len)
{
	static char *scratch;

	switch (op) {
	case OP_MUNMAP:
		return munmap(p, len);
	case OP_MADVISE:
		return madvise(p, len, MADV_DONTNEED);
	case OP_MREMAP:
		if (!scratch)
			scratch = mmap(NULL, 64 * P, PROT_NONE,
				       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		return mremap(p, len, len, MREMAP_MAYMOVE | MREMAP_FIXED,
			      scratch) == MAP_FAILED ? -1 : 0;
	case OP_MPROTECT:
		return mprotect(p, len, PROT_READ);
	}
	return -1;
}

static void test_blocking(void)
{
	static const struct { enum op op; const char *name; unsigned int type; } ops[] = {
		{ OP_MUNMAP, "munmap", TETHER_EV_UNMAP },
		{ OP_MADVISE, "madvise_dontneed", TETHER_EV_CLEAR },
		{ OP_MREMAP, "mremap", TETHER_EV_UNMAP },
		{ OP_MPROTECT, "mprotect", TETHER_EV_PROTECTION_VMA },
	};
	const double delay = 200;
	unsigned int i;

	for (i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
		char name[64];
		char *p = map_pages(16);
		uint64_t rid = reg_range(efd, p, 16 * P);
		double t0, t1;
		int n, b, e, rc;

		snprintf(name, sizeof(name), "blocking_%s", ops[i].name);
		if (!rid || dmark(rid, 4 * P, 4 * P))
			continue;
		dcall(D_ACKDELAY, (int64_t)delay, 0, 0, -1);
		dcall(D_CLEAR, 0, 0, 0, -1);
		t0 = now_ms();
		rc = do_op(ops[i].op, p + 4 * P, 2 * P);
		t1 = now_ms();
		n = devents();
		b = find_ev(n, rid, TETHER_KIND_BEGIN, 4 * P, 6 * P);
		e = find_ev(n, rid, TETHER_KIND_END, 4 * P, 6 * P);
		if (rc) {
			fail(name, "the call failed: %s", strerror(errno));
		} else if (b < 0) {
			fail(name, "no BEGIN for range %llu pages 4-5 (%d events)",
			     (unsigned long long)rid, n);
			dump_events(n);
		} else if (evs[b].ev.type != ops[i].type) {
			fail(name, "BEGIN type %s, expected %s", type_name(evs[b].ev.type),
			     type_name(ops[i].type));
		} else if (!(evs[b].ev.flags & TETHER_EVF_BLOCKABLE)) {
			fail(name, "BEGIN not flagged BLOCKABLE");
		} else if (evs[b].ev.start > 4 * (uint64_t)P || evs[b].ev.end < 6 * (uint64_t)P) {
			fail(name, "BEGIN covers [%#llx,%#llx), not [%#lx,%#lx)",
			     (unsigned long long)evs[b].ev.start,
			     (unsigned long long)evs[b].ev.end, 4 * P, 6 * P);
		} else if (!(evs[b].t_recv >= t0 && evs[b].t_recv <= t1)) {
			fail(name, "BEGIN not received while the call ran");
		} else if (!evs[b].t_ack || t1 < evs[b].t_ack) {
			fail(name, "the call returned before the ack");
		} else if (t1 - t0 < delay) {
			fail(name, "the call took %.1f ms < ack delay %.0f ms", t1 - t0, delay);
		} else if (t1 - t0 > delay + 1500 * scale) {
			fail(name, "the call took %.1f ms, far more than the ack delay", t1 - t0);
		} else if (e < 0 || evs[e].t_recv < evs[b].t_ack) {
			fail(name, "no END after the ack");
		} else {
			info("%s: BEGIN %s after %.1f ms, call took %.1f ms (ack delay %.0f ms)",
			     ops[i].name, type_name(evs[b].ev.type), evs[b].t_recv - t0,
			     t1 - t0, delay);
			pass(name);
		}
	}
}

/* ------------------------------------------------------------------ */
/* (b) G3: unmarked sub-ranges are not forwarded and cost nothing      */

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static void test_unmarked(void)
{
	char *p = map_pages(32), *q = map_pages(32);
	uint64_t rid = reg_range(efd, p, 32 * P);
	double t0, t1, worst = 0;
	enum op ops[] = { OP_MADVISE, OP_MPROTECT, OP_MUNMAP };
	static double treg[200], tun[200];
	unsigned int i;
	int n, k, bad = 0;

	if (!rid || dmark(rid, 0, 4 * P))
		return;
	dcall(D_ACKDELAY, 200, 0, 0, -1);
	dcall(D_CLEAR, 0, 0, 0, -1);
	for (i = 0; i < sizeof(ops) / sizeof(ops[0]); i++) {
		t0 = now_ms();
		do_op(ops[i], p + (8 + 4 * i) * P, 2 * P);	/* registered, unmarked */
		do_op(ops[i], q + (8 + 4 * i) * P, 2 * P);	/* not registered */
		t1 = now_ms();
		if (t1 - t0 > worst)
			worst = t1 - t0;
	}
	n = devents();
	for (k = 0; k < n; k++)
		if (evs[k].ev.range_id == rid)
			bad++;
	if (bad) {
		fail("g3_unmarked_not_forwarded", "%d events for unmarked sub-ranges", bad);
		dump_events(n);
	} else if (worst > 100 * scale) {
		fail("g3_unmarked_not_forwarded", "a call on unmarked pages took %.1f ms", worst);
	} else {
		pass("g3_unmarked_not_forwarded");
	}

	/* Cost: madvise(DONTNEED) + refault of one page, registered-unmarked
	 * page vs a page of a mapping tether does not know. */
	for (i = 0; i < 200; i++) {
		t0 = now_ms();
		madvise(p + 30 * P, P, MADV_DONTNEED);
		p[30 * P] = 1;
		t1 = now_ms();
		treg[i] = t1 - t0;
		t0 = now_ms();
		madvise(q + 30 * P, P, MADV_DONTNEED);
		q[30 * P] = 1;
		t1 = now_ms();
		tun[i] = t1 - t0;
	}
	qsort(treg, 200, sizeof(double), cmp_double);
	qsort(tun, 200, sizeof(double), cmp_double);
	info("g3 cost: madvise+refault median %.1f us on a registered unmarked page, %.1f us on an unknown page",
	     treg[100] * 1e3, tun[100] * 1e3);
	/* Loose bound: TCG timing is noisy; this catches waiting, not cycles. */
	if (treg[100] > 3 * tun[100] + 0.05 * scale)
		fail("g3_unmarked_cost", "median %.1f us vs %.1f us", treg[100] * 1e3,
		     tun[100] * 1e3);
	else
		pass("g3_unmarked_cost");
	n = devents();
	if (count_ev(n, rid, TETHER_KIND_BEGIN))
		fail("g3_unmarked_cost", "events were forwarded for unmarked pages");
	munmap(q, 32 * P);
}

/* ------------------------------------------------------------------ */
/* child exporters                                                     */

struct child {
	pid_t pid;
	int sock;
	int fd;			/* its exporter fd, received */
	int nr;
	uint64_t rid[64];
	uint64_t addr[64];
	uint64_t exp_id;
	int dfd;		/* its exporter fd's number in the fake daemon */
};

struct child_hello {
	int64_t nr;
	uint64_t rid[64];
	uint64_t addr[64];
};

/*
 * Fork a child that maps @nr ranges of @pages pages, registers them on its
 * own exporter fd and sends fd + ids.  Then it waits for commands:
 *   'u' munmap first page of every range (reports 'd' when done)
 *   'm' munmap the first page of range 0 (reports 'd')
 *   'r' map a new page filled with 0x33 over the first page of range 0
 *       (MAP_FIXED: an implicit munmap; reports 'd')
 *   'M' move page 1 of range 0 over its page 0 (mremap; reports 'd')
 *   'p' / 'w' make page 0 of range 0 read-only / writable (reports 'd')
 *   'o' allocate memory until killed (OOM)
 *   'n' nothing (reports 'd': the child has closed its own exporter fd)
 *   'x' exit(0)
 * If @cgroup is set, the child first moves itself there.
 */
static int spawn_child(struct child *c, int nr, int pages, const char *cgroup)
{
	int sv[2];

	memset(c, 0, sizeof(*c));
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv))
		return -1;
	c->pid = fork();
	if (c->pid == 0) {
		struct child_hello h = { .nr = nr };
		int fd, i;
		char cmd;

		close(sv[0]);
		if (cgroup) {
			FILE *f = fopen(cgroup, "w");

			if (!f || fprintf(f, "%d\n", getpid()) < 0 || fclose(f))
				_exit(5);
		}
		fd = open(TETHER_DEVICE, O_RDWR | O_CLOEXEC);
		if (fd < 0)
			_exit(6);
		for (i = 0; i < nr; i++) {
			char *p = map_pages(pages);
			struct tether_range_reg r = { .start = (uintptr_t)p, .len = pages * P };

			if (ioctl(fd, TETHER_IOC_REGISTER_RANGE, &r))
				_exit(7);
			h.rid[i] = r.range_id;
			h.addr[i] = (uintptr_t)p;
		}
		if (send_msg(sv[1], &h, sizeof(h), fd))
			_exit(8);
		close(fd);
		while (read(sv[1], &cmd, 1) == 1) {
			if (cmd == 'u' || cmd == 'm') {
				for (i = 0; i < (cmd == 'm' ? 1 : nr); i++)
					munmap((void *)(uintptr_t)h.addr[i], P);
				cmd = 'd';
				if (write(sv[1], &cmd, 1) != 1)
					_exit(9);
			} else if (cmd == 'o') {
				for (;;) {
					char *m = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE,
						       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
					if (m != MAP_FAILED)
						memset(m, 1, 1 << 20);
				}
			} else if (cmd == 'r') {
				/* a new page over page 0 of range 0 */
				char *m = mmap((void *)(uintptr_t)h.addr[0], P,
					       PROT_READ | PROT_WRITE,
					       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);

				if (m == MAP_FAILED)
					_exit(10);
				memset(m, 0x33, P);
				cmd = 'd';
				if (write(sv[1], &cmd, 1) != 1)
					_exit(9);
			} else if (cmd == 'M') {
				/* page 1 of range 0 moved over page 0 (mremap) */
				void *a = (void *)(uintptr_t)h.addr[0];
				void *m = mremap((char *)a + P, P, P,
						 MREMAP_MAYMOVE | MREMAP_FIXED, a);

				if (m == MAP_FAILED)
					_exit(11);
				cmd = 'd';
				if (write(sv[1], &cmd, 1) != 1)
					_exit(9);
			} else if (cmd == 'p' || cmd == 'w') {
				/* page 0 of range 0 read-only / writable again */
				mprotect((void *)(uintptr_t)h.addr[0], P,
					 cmd == 'p' ? PROT_READ : PROT_READ | PROT_WRITE);
				cmd = 'd';
				if (write(sv[1], &cmd, 1) != 1)
					_exit(9);
			} else if (cmd == 'n') {	/* no-op: it is past close(fd) */
				cmd = 'd';
				if (write(sv[1], &cmd, 1) != 1)
					_exit(9);
			} else if (cmd == 'x') {
				_exit(0);
			}
		}
		_exit(0);
	}
	close(sv[1]);
	c->sock = sv[0];
	{
		struct child_hello h;
		ssize_t n = recv_msg(c->sock, &h, sizeof(h), &c->fd);

		if (n != sizeof(h) || c->fd < 0)
			return -1;
		c->nr = h.nr;
		memcpy(c->rid, h.rid, sizeof(h.rid));
		memcpy(c->addr, h.addr, sizeof(h.addr));
	}
	return 0;
}

static int child_cmd(struct child *c, char cmd, int want_reply, int timeout_ms)
{
	char r;
	struct pollfd pfd = { c->sock, POLLIN, 0 };

	if (write(c->sock, &cmd, 1) != 1)
		return -1;
	if (!want_reply)
		return 0;
	if (poll(&pfd, 1, timeout_ms) != 1 || read(c->sock, &r, 1) != 1)
		return -1;
	return r == 'd' ? 0 : -1;
}

static int attach_child(struct child *c)
{
	struct dreply r = dcall(D_ATTACH, 0, 0, 0, c->fd);

	close(c->fd);		/* the daemon holds it now */
	c->fd = -1;
	if (r.ret) {
		fail("attach", "ATTACH of a child's exporter fd: %s", strerror(r.err));
		return -1;
	}
	c->exp_id = r.v;
	c->dfd = (int)r.v2;
	return 0;
}

/* wait for a child with a deadline; returns status or -1 */
static int wait_child(pid_t pid, int timeout_ms)
{
	double end = now_ms() + timeout_ms;
	int st;

	while (now_ms() < end) {
		pid_t r = waitpid(pid, &st, WNOHANG);

		if (r == pid)
			return st;
		usleep(2000);
	}
	kill(pid, SIGKILL);
	waitpid(pid, &st, 0);
	return -1;
}

/* ------------------------------------------------------------------ */
/* (c) exporter exit gives RELEASE, and exit waits for the ack         */

static void test_exit_release(void)
{
	struct child c;
	double t0, t1;
	int n, st, r0, r1;

	if (spawn_child(&c, 2, 4, NULL) || attach_child(&c)) {
		fail("exit_release", "could not set up a child exporter");
		return;
	}
	dmark(c.rid[0], 0, P);
	dcall(D_ACKDELAY, 200, 0, 0, -1);
	dcall(D_CLEAR, 0, 0, 0, -1);
	t0 = now_ms();
	child_cmd(&c, 'x', 0, 0);
	st = wait_child(c.pid, 10000 * scale);
	t1 = now_ms();
	close(c.sock);
	n = devents();
	r0 = find_ev(n, c.rid[0], TETHER_KIND_RELEASE, 0, 4 * P);
	r1 = find_ev(n, c.rid[1], TETHER_KIND_RELEASE, 0, 4 * P);
	if (st < 0 || !WIFEXITED(st)) {
		fail("exit_release", "child did not exit normally");
	} else if (r0 < 0 || r1 < 0) {
		fail("exit_release", "RELEASE missing (marked range: %s, unmarked: %s)",
		     r0 < 0 ? "no" : "yes", r1 < 0 ? "no" : "yes");
		dump_events(n);
	} else if (evs[r0].ev.type != TETHER_EV_RELEASE ||
		   evs[r0].ev.exporter_id != c.exp_id) {
		fail("exit_release", "RELEASE has type %s exporter %llu (want %llu)",
		     type_name(evs[r0].ev.type), (unsigned long long)evs[r0].ev.exporter_id,
		     (unsigned long long)c.exp_id);
	} else if (t1 - t0 < 200) {
		fail("exit_release", "exit finished in %.1f ms, before the ack (200 ms)",
		     t1 - t0);
	} else {
		info("exit_release: exit took %.1f ms with a 200 ms ack delay", t1 - t0);
		pass("exit_release");
	}
}

/* ------------------------------------------------------------------ */
/* (d) closing the control fd releases a blocked exporter              */

static void test_ctl_close(void)
{
	char *p = map_pages(8);
	uint64_t rid = reg_range(efd, p, 8 * P);
	struct dreply r;
	double t0, t1;
	int n;

	if (!rid || dmark(rid, 0, 8 * P))
		return;
	dcall(D_ACKDELAY, -1, 0, 0, -1);
	dcall(D_CLOSE_AFTER, 300, 0, 0, -1);
	dcall(D_CLEAR, 0, 0, 0, -1);
	t0 = now_ms();
	munmap(p, P);
	t1 = now_ms();
	if (t1 - t0 < 280 || t1 - t0 > 300 + 1500 * scale)
		fail("ctl_close_releases", "munmap took %.1f ms (ctl closed after 300 ms, timeout 5000 ms)",
		     t1 - t0);
	else
		pass("ctl_close_releases");
	info("ctl_close: munmap took %.1f ms", t1 - t0);

	/* A new control fd; the exporter was detached and can be attached
	 * again, with no marks left over. */
	r = dcall(D_REOPEN, 0, 0, 0, -1);
	if (r.ret) {
		fail("ctl_reattach", "REOPEN: %s", strerror(r.err));
		return;
	}
	r = dcall(D_ATTACH, 0, 0, 0, efd);
	if (r.ret) {
		fail("ctl_reattach", "ATTACH after the old control closed: %s", strerror(r.err));
		return;
	}
	dcall(D_ACKDELAY, 0, 0, 0, -1);
	dcall(D_CLEAR, 0, 0, 0, -1);
	munmap(p + P, P);
	n = devents();
	if (count_ev(n, rid, TETHER_KIND_BEGIN))
		fail("ctl_reattach", "marks survived the control fd's close");
	else
		pass("ctl_reattach");
}

/* ------------------------------------------------------------------ */
/* (e) no ack: the module's timeout releases the exporter              */

static void test_timeout(void)
{
	char *p = map_pages(8);
	uint64_t rid = reg_range(efd, p, 8 * P);
	double t0, t1;
	int n, b;

	if (!rid || dmark(rid, 0, 8 * P))
		return;
	if (set_timeout_ms(500)) {
		fail("ack_timeout", "cannot set ack_timeout_ms");
		return;
	}
	dcall(D_ACKDELAY, -1, 0, 0, -1);
	dcall(D_CLEAR, 0, 0, 0, -1);
	t0 = now_ms();
	munmap(p, P);
	t1 = now_ms();
	set_timeout_ms(5000);
	dcall(D_ACKDELAY, 0, 0, 0, -1);
	n = devents();
	b = find_ev(n, rid, TETHER_KIND_BEGIN, 0, P);
	if (b < 0)
		fail("ack_timeout", "no BEGIN");
	else if (t1 - t0 < 490 || t1 - t0 > 500 + 2000 * scale)
		fail("ack_timeout", "munmap took %.1f ms with a 500 ms timeout", t1 - t0);
	else if (system("dmesg | grep -q 'tether: .*no ack for event'") != 0)
		fail("ack_timeout", "no timeout message in the kernel log");
	else
		pass("ack_timeout");
	info("ack_timeout: munmap took %.1f ms (timeout 500 ms)", t1 - t0);
}

/* ------------------------------------------------------------------ */
/* (e2) ack_timeout_ms only takes 100..60000 (issue 14, defect 12)     */

#define ACK_TIMEOUT_PARAM "/sys/module/tether/parameters/ack_timeout_ms"

/* Writes @val to the parameter with one write(2); 0 or the errno. */
static int write_timeout_param(const char *val)
{
	int fd = open(ACK_TIMEOUT_PARAM, O_WRONLY | O_CLOEXEC);
	ssize_t n;
	int err;

	if (fd < 0)
		return errno;
	n = write(fd, val, strlen(val));
	err = n < 0 ? errno : 0;
	close(fd);
	return err;
}

static long read_timeout_param(void)
{
	FILE *f = fopen(ACK_TIMEOUT_PARAM, "r");
	long v = -1;

	if (!f)
		return -1;
	if (fscanf(f, "%ld", &v) != 1)
		v = -1;
	fclose(f);
	return v;
}

/*
 * 0 used to mean "never wait": every BEGIN went out without
 * TETHER_EVF_BLOCKABLE, which the daemon takes for the OOM reaper and
 * answers by revoking every mapper.  Values below 100 ms time out every
 * blockable BEGIN that needs a network round trip; above 60 s an exporter
 * holding mmap_lock blocks others past the hung-task timeout.  Each bad
 * write must fail with EINVAL and change nothing.
 */
static void test_timeout_param(void)
{
	static const char *const bad[] = {
		"0", "0\n", "1", "99", "60001", "600000", "4294967295",
		"4294967296", "-1", "abc", "500x",
	};
	static const struct {
		const char *val;
		long want;
	} good[] = { { "100", 100 }, { "60000", 60000 }, { "2500\n", 2500 } };
	long orig = read_timeout_param(), v;
	unsigned int i;
	int err, nbad = 0, ngood = 0;

	if (orig < 0) {
		fail("param_timeout", "cannot read %s", ACK_TIMEOUT_PARAM);
		return;
	}
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err = write_timeout_param(bad[i]);
		v = read_timeout_param();
		if (err != EINVAL || v != orig) {
			fail("param_timeout_rejects_bad",
			     "writing \"%s\": %s (want EINVAL), value now %ld (was %ld)",
			     bad[i], err ? strerror(err) : "accepted", v, orig);
			nbad++;
			/* put it back for the next case and the later tests */
			write_timeout_param("5000");
			orig = read_timeout_param();
		}
	}
	if (!nbad)
		pass("param_timeout_rejects_bad");
	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		err = write_timeout_param(good[i].val);
		v = read_timeout_param();
		if (err || v != good[i].want) {
			fail("param_timeout_accepts_good",
			     "writing \"%s\": %s, value now %ld (want %ld)",
			     good[i].val, err ? strerror(err) : "accepted", v,
			     good[i].want);
			ngood++;
		}
	}
	if (!ngood)
		pass("param_timeout_accepts_good");
	err = set_timeout_ms(5000);
	v = read_timeout_param();
	if (err || v != 5000)
		fail("param_timeout_restored", "restoring 5000: value now %ld", v);
	else
		pass("param_timeout_restored");
}

/* ------------------------------------------------------------------ */
/* (f) bad ioctl arguments                                             */

#define EXPECT_ERR(name, expr, want)                                         \
	do {                                                                 \
		errno = 0;                                                   \
		long __r = (long)(expr);                                     \
		if (__r != -1 || errno != (want)) {                          \
			fail(name, "%s -> %ld errno %d (%s), want %s",       \
			     #expr, __r, errno, strerror(errno), #want);     \
			bad++;                                               \
		} else {                                                     \
			pass(name);                                          \
		}                                                            \
	} while (0)

static void test_bad_args(void)
{
	char *p = map_pages(8);
	uint64_t rid = reg_range(efd, p, 8 * P), base = (uintptr_t)p;
	struct tether_range_reg rr;
	struct tether_mark m;
	struct tether_attach a;
	struct tether_ack ak;
	struct tether_seq sq;
	struct tether_range_info ri;
	struct tether_event ev;
	struct dreply r;
	int bad = 0, pctl, unbound, devnull, n;
	pid_t pid;

	if (!rid)
		return;
	(void)bad;
#define REG(s, l, f) (rr = (struct tether_range_reg){ .start = (s), .len = (l), .flags = (f) }, \
		      ioctl(efd, TETHER_IOC_REGISTER_RANGE, &rr))
	EXPECT_ERR("bad_register_unaligned_start", REG(base + 1, P, 0), EINVAL);
	EXPECT_ERR("bad_register_unaligned_len", REG(base, P + 1, 0), EINVAL);
	EXPECT_ERR("bad_register_zero_len", REG(base, 0, 0), EINVAL);
	EXPECT_ERR("bad_register_wrap", REG(~0ULL & ~(uint64_t)(P - 1), 2 * P, 0), EINVAL);
	EXPECT_ERR("bad_register_kernel_half", REG(0xffff800000000000ULL, P, 0), EINVAL);
	EXPECT_ERR("bad_register_flags", REG(base, P, 1), EINVAL);
	EXPECT_ERR("bad_register_efault", ioctl(efd, TETHER_IOC_REGISTER_RANGE, (void *)8), EFAULT);
	EXPECT_ERR("bad_unknown_cmd", ioctl(efd, _IO(TETHER_IOC_MAGIC, 0x7f)), ENOTTY);
	EXPECT_ERR("bad_foreign_magic_cmd", ioctl(efd, _IOW('x', 1, int), &n), ENOTTY);
	m = (struct tether_mark){ .range_id = rid, .offset = 0, .len = P };
	EXPECT_ERR("bad_mark_on_exporter_fd", ioctl(efd, TETHER_IOC_MARK_CACHED, &m), EBADFD);
	ak = (struct tether_ack){ .event_id = 1 };
	EXPECT_ERR("bad_ack_on_exporter_fd", ioctl(efd, TETHER_IOC_ACK, &ak), EBADFD);
	EXPECT_ERR("bad_read_on_exporter_fd", read(efd, &ev, sizeof(ev)), EBADFD);

	/* a forked child may not register ranges of its mm on our fd */
	pid = fork();
	if (pid == 0) {
		char *c = map_pages(1);

		_exit(REG((uintptr_t)c, P, 0) == -1 && errno == EINVAL ? 0 : 1);
	}
	n = wait_child(pid, 5000);
	if (n < 0 || !WIFEXITED(n) || WEXITSTATUS(n)) {
		fail("bad_register_from_forked_child", "expected EINVAL");
		bad++;
	} else {
		pass("bad_register_from_forked_child");
	}

	/* a second control fd that has nothing attached */
	pctl = open(TETHER_DEVICE, O_RDWR | O_NONBLOCK | O_CLOEXEC);
	unbound = open(TETHER_DEVICE, O_RDWR | O_CLOEXEC);
	devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (pctl < 0 || unbound < 0 || devnull < 0 || ioctl(pctl, TETHER_IOC_CONTROL)) {
		fail("bad_args_setup", "open: %s", strerror(errno));
		return;
	}
	m = (struct tether_mark){ .range_id = rid, .offset = 0, .len = P };
	EXPECT_ERR("bad_mark_foreign_range", ioctl(pctl, TETHER_IOC_MARK_CACHED, &m), ENOENT);
	EXPECT_ERR("bad_unmark_foreign_range", ioctl(pctl, TETHER_IOC_UNMARK_CACHED, &m), ENOENT);
	sq = (struct tether_seq){ .range_id = rid };
	EXPECT_ERR("bad_retry_foreign_range", ioctl(pctl, TETHER_IOC_READ_RETRY, &sq), ENOENT);
	ri = (struct tether_range_info){ .range_id = rid };
	EXPECT_ERR("bad_info_foreign_range", ioctl(pctl, TETHER_IOC_RANGE_INFO, &ri), ENOENT);
	m.range_id = 0;
	EXPECT_ERR("bad_mark_range_zero", ioctl(pctl, TETHER_IOC_MARK_CACHED, &m), ENOENT);
	m.range_id = 1ULL << 40;
	EXPECT_ERR("bad_mark_range_huge", ioctl(pctl, TETHER_IOC_MARK_CACHED, &m), ENOENT);
	ak = (struct tether_ack){ .event_id = 123456789 };
	EXPECT_ERR("bad_ack_unknown", ioctl(pctl, TETHER_IOC_ACK, &ak), ENOENT);
	ak = (struct tether_ack){ .event_id = 1, .flags = 1 };
	EXPECT_ERR("bad_ack_flags", ioctl(pctl, TETHER_IOC_ACK, &ak), EINVAL);
	a = (struct tether_attach){ .fd = -1 };
	EXPECT_ERR("bad_attach_fd_minus1", ioctl(pctl, TETHER_IOC_ATTACH, &a), EBADF);
	a = (struct tether_attach){ .fd = devnull };
	EXPECT_ERR("bad_attach_not_tether", ioctl(pctl, TETHER_IOC_ATTACH, &a), EINVAL);
	a = (struct tether_attach){ .fd = pctl };
	EXPECT_ERR("bad_attach_self", ioctl(pctl, TETHER_IOC_ATTACH, &a), EINVAL);
	a = (struct tether_attach){ .fd = unbound };
	EXPECT_ERR("bad_attach_unbound", ioctl(pctl, TETHER_IOC_ATTACH, &a), EINVAL);
	a = (struct tether_attach){ .fd = efd, .pad = 1 };
	EXPECT_ERR("bad_attach_pad", ioctl(pctl, TETHER_IOC_ATTACH, &a), EINVAL);
	a = (struct tether_attach){ .fd = efd };
	EXPECT_ERR("bad_attach_busy", ioctl(pctl, TETHER_IOC_ATTACH, &a), EBUSY);
	a = (struct tether_attach){ .fd = pctl };
	EXPECT_ERR("bad_attach_from_exporter_fd", ioctl(efd, TETHER_IOC_ATTACH, &a), EBADFD);
	rr = (struct tether_range_reg){ .start = base, .len = P };
	EXPECT_ERR("bad_register_on_control_fd", ioctl(pctl, TETHER_IOC_REGISTER_RANGE, &rr), EBADFD);
	EXPECT_ERR("bad_read_short", read(pctl, &ev, sizeof(ev) - 1), EINVAL);
	EXPECT_ERR("bad_read_empty_nonblock", read(pctl, &ev, sizeof(ev)), EAGAIN);
	EXPECT_ERR("bad_read_unbound", read(unbound, &ev, sizeof(ev)), EBADFD);

	/* through the daemon's (attached) control fd */
#define DMARK_ERR(name, off, len, want)                                        \
	do {                                                                   \
		r = dcall(D_MARK, rid, (off), (len), -1);                      \
		if (r.ret != -1 || r.err != (want)) {                          \
			fail(name, "MARK(%#llx, %#llx) -> %lld errno %lld, want %s", \
			     (unsigned long long)(off), (unsigned long long)(len), \
			     (long long)r.ret, (long long)r.err, #want);       \
			bad++;                                                 \
		} else {                                                       \
			pass(name);                                            \
		}                                                              \
	} while (0)
	DMARK_ERR("bad_mark_unaligned_offset", 1, P, EINVAL);
	DMARK_ERR("bad_mark_unaligned_len", 0, P - 1, EINVAL);
	DMARK_ERR("bad_mark_zero_len", 0, 0, EINVAL);
	DMARK_ERR("bad_mark_beyond_range", 4 * P, 8 * P, EINVAL);
	DMARK_ERR("bad_mark_wrap", (uint64_t)-P, 2 * P, EINVAL);

	int changed = 0;

	/* nothing changed: the range is as registered, nothing is marked,
	 * and a mark still works as before */
	r = dcall(D_INFO, rid, 0, 0, -1);
	if (r.ret || r.v2 != base || r.v3 != 8 * (uint64_t)P) {
		fail("bad_args_nothing_changed", "RANGE_INFO: ret %lld start %#llx len %#llx",
		     (long long)r.ret, (unsigned long long)r.v2, (unsigned long long)r.v3);
		changed++;
	}
	dcall(D_ACKDELAY, 0, 0, 0, -1);
	dcall(D_CLEAR, 0, 0, 0, -1);
	madvise(p, 8 * P, MADV_DONTNEED);
	n = devents();
	if (count_ev(n, rid, TETHER_KIND_BEGIN)) {
		fail("bad_args_nothing_changed", "a rejected MARK left a mark behind");
		changed++;
	}
	dmark(rid, 2 * P, P);
	dcall(D_CLEAR, 0, 0, 0, -1);
	madvise(p, 8 * P, MADV_DONTNEED);
	n = devents();
	if (find_ev(n, rid, TETHER_KIND_BEGIN, 2 * P, 3 * P) < 0) {
		fail("bad_args_nothing_changed", "a valid MARK after the rejected ones does not work");
		changed++;
	}
	/* the exporter stayed attached to the daemon despite EBUSY etc. */
	if (!changed)
		pass("bad_args_nothing_changed");
	close(pctl);
	close(unbound);
	close(devnull);
}

/* ------------------------------------------------------------------ */
/* (g) COW break after fork + store                                    */

static void test_cow(void)
{
	char *p = map_pages(8);
	uint64_t rid = reg_range(efd, p, 8 * P);
	int pfd[2], n, b;
	double t0, t1;
	pid_t pid;
	char x;

	if (!rid || dmark(rid, 0, 8 * P) || pipe(pfd))
		return;
	dcall(D_ACKDELAY, 0, 0, 0, -1);
	pid = fork();		/* write-protects our pages: PROTECTION_PAGE */
	if (pid == 0) {
		close(pfd[1]);
		if (read(pfd[0], &x, 1) < 0)
			_exit(1);
		_exit(0);
	}
	close(pfd[0]);
	dcall(D_ACKDELAY, 200, 0, 0, -1);
	dcall(D_CLEAR, 0, 0, 0, -1);
	t0 = now_ms();
	p[3 * P] = 7;		/* COW break: the old page leaves our page table */
	t1 = now_ms();
	close(pfd[1]);
	wait_child(pid, 5000);
	dcall(D_ACKDELAY, 0, 0, 0, -1);
	n = devents();
	b = find_ev(n, rid, TETHER_KIND_BEGIN, 3 * P, 4 * P);
	if (b < 0) {
		fail("cow_break", "no BEGIN for the COW break of page 3");
		dump_events(n);
	} else if (t1 - t0 < 200) {
		fail("cow_break", "the store took %.1f ms: it did not wait for the ack", t1 - t0);
	} else {
		info("cow_break: BEGIN %s [%#llx,%#llx), store took %.1f ms",
		     type_name(evs[b].ev.type), (unsigned long long)evs[b].ev.start,
		     (unsigned long long)evs[b].ev.end, t1 - t0);
		pass("cow_break");
	}
}

/* ------------------------------------------------------------------ */
/* (h) several processes, many ranges                                  */

#define NPROC 3
#define NRANGES 32

static void test_many(void)
{
	struct child c[NPROC];
	int i, j, n, st, bad = 0, ok = 1;
	struct dreply r;

	for (i = 0; i < NPROC; i++) {
		if (spawn_child(&c[i], NRANGES, 2, NULL) || attach_child(&c[i])) {
			fail("many", "child %d setup failed", i);
			return;
		}
		for (j = 0; j < NRANGES; j++)
			if (dmark(c[i].rid[j], 0, 2 * P))
				return;
	}
	r = dcall(D_INFO, c[1].rid[5], 0, 0, -1);
	if (r.ret || r.v != c[1].exp_id || r.v2 != c[1].addr[5] || r.v3 != 2 * (uint64_t)P)
		fail("many_range_info", "RANGE_INFO does not match what the exporter registered");
	else
		pass("many_range_info");
	dcall(D_ACKDELAY, 0, 0, 0, -1);
	dcall(D_CLEAR, 0, 0, 0, -1);
	for (i = 0; i < NPROC; i++)	/* all at once */
		child_cmd(&c[i], 'u', 0, 0);
	for (i = 0; i < NPROC; i++) {
		char d;
		struct pollfd pfd = { c[i].sock, POLLIN, 0 };

		if (poll(&pfd, 1, 20000 * scale) != 1 || read(c[i].sock, &d, 1) != 1)
			ok = 0;
	}
	for (i = 0; i < NPROC; i++) {
		child_cmd(&c[i], 'x', 0, 0);
		st = wait_child(c[i].pid, 20000 * scale);
		if (st < 0 || !WIFEXITED(st))
			ok = 0;
		close(c[i].sock);
	}
	if (!ok) {
		fail("many", "children did not finish");
		return;
	}
	n = devents();
	for (i = 0; i < NPROC; i++)
		for (j = 0; j < NRANGES; j++) {
			int b = find_ev(n, c[i].rid[j], TETHER_KIND_BEGIN, 0, P);
			int e = find_ev(n, c[i].rid[j], TETHER_KIND_END, 0, P);
			int rl = find_ev(n, c[i].rid[j], TETHER_KIND_RELEASE, 0, 2 * P);

			if (b < 0 || e < 0 || rl < 0 ||
			    evs[b].ev.exporter_id != c[i].exp_id ||
			    evs[rl].ev.exporter_id != c[i].exp_id ||
			    evs[b].ev.type != TETHER_EV_UNMAP) {
				if (bad++ < 3)
					fail("many", "child %d range %d: BEGIN %d END %d RELEASE %d",
					     i, j, b, e, rl);
			}
		}
	if (!bad)
		pass("many_processes_many_ranges");
	info("many: %d processes x %d ranges, %d events", NPROC, NRANGES, n);
}

/* ------------------------------------------------------------------ */
/* one munmap over ranges of several exporter fds of one process       */

#define NEXPFD 3

/*
 * libtether opens one exporter fd per export, so one munmap over N
 * segments of a process covers ranges of N exporter fds.  With one
 * notifier per fd the kernel ran N invalidate_range_start callbacks one
 * after the other, each waiting for its own ack: N x the daemon's
 * deadline (N x ack_timeout_ms with a silent daemon).  With the mm's one
 * shared notifier every BEGIN is queued before any wait.  The daemon acks
 * nothing here until it has read them all: before the fix only the first
 * BEGIN can arrive (the second is queued only after the first's ack or
 * timeout, 5 s, longer than the 3 s we wait).
 */
static void test_one_munmap_many_exporters(void)
{
	int sv[2], fds[NEXPFD], i, n = -1, got = 0, st;
	uint64_t rid[NEXPFD] = { 0 };
	struct pollfd pfd;
	double end;
	pid_t pid;
	char d;

	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv)) {
		fail("one_munmap_many_exporters", "socketpair: %s", strerror(errno));
		return;
	}
	pid = fork();
	if (pid == 0) {
		char *p = map_pages(NEXPFD);	/* contiguous: one munmap covers all */

		close(sv[0]);
		for (i = 0; i < NEXPFD; i++) {
			int fd = open(TETHER_DEVICE, O_RDWR | O_CLOEXEC);
			struct tether_range_reg r = { .start = (uintptr_t)(p + i * P), .len = P };

			if (fd < 0 || ioctl(fd, TETHER_IOC_REGISTER_RANGE, &r) ||
			    send_msg(sv[1], &r.range_id, sizeof(r.range_id), fd))
				_exit(7);
			close(fd);
		}
		if (read(sv[1], &d, 1) != 1)
			_exit(8);
		munmap(p, NEXPFD * P);
		d = 'd';
		if (write(sv[1], &d, 1) != 1)
			_exit(9);
		_exit(0);
	}
	close(sv[1]);
	for (i = 0; i < NEXPFD; i++) {
		struct dreply r;

		if (recv_msg(sv[0], &rid[i], sizeof(rid[i]), &fds[i]) != sizeof(rid[i]) ||
		    fds[i] < 0) {
			fail("one_munmap_many_exporters", "child setup failed");
			goto out;
		}
		r = dcall(D_ATTACH, 0, 0, 0, fds[i]);
		close(fds[i]);		/* the daemon holds it now */
		if (r.ret || dmark(rid[i], 0, P)) {
			fail("one_munmap_many_exporters", "ATTACH/MARK of exporter fd %d: %s", i,
			     strerror(r.err));
			goto out;
		}
	}
	dcall(D_ACKDELAY, -1, 0, 0, -1);	/* ack nothing until told */
	dcall(D_CLEAR, 0, 0, 0, -1);
	d = 'm';
	if (write(sv[0], &d, 1) != 1)
		goto out;
	end = now_ms() + 3000 * scale;	/* below the 5 s ack timeout */
	do {
		n = devents();
		for (i = 0, got = 0; i < NEXPFD; i++)
			got += count_ev(n, rid[i], TETHER_KIND_BEGIN) > 0;
		if (got == NEXPFD)
			break;
		usleep(5000);
	} while (now_ms() < end);
	if (got != NEXPFD) {
		fail("one_munmap_many_exporters",
		     "%d of %d BEGINs arrived before any ack: the munmap waits for each exporter fd's ack in turn",
		     got, NEXPFD);
		dump_events(n);
	} else {
		pass("one_munmap_many_exporters");
	}
	dcall(D_ACKDELAY, 0, 0, 0, -1);	/* ack what comes from now on */
	dcall(D_ACKNOW, 0, 0, 0, -1);
	pfd = (struct pollfd){ sv[0], POLLIN, 0 };
	while (poll(&pfd, 1, 10000 * scale) == 1 && read(sv[0], &d, 1) == 1 && d != 'd')
		;
	if (d != 'd')
		fail("one_munmap_many_exporters", "the child's munmap did not return");
	/* BEGINs the kernel queued after our ACKNOW (before the fix) */
	dcall(D_ACKNOW, 0, 0, 0, -1);
out:
	close(sv[0]);
	st = wait_child(pid, 10000 * scale);
	if (st < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
		fail("one_munmap_many_exporters", "child did not exit cleanly (%d)", st);
}

/*
 * One invalidation groups its BEGINs per control fd in a fixed array of
 * TETHER_MAX_MM_CTLS (4) on its stack, so the exporter fds of one process
 * may be attached to at most 4 control fds at once: one more is refused
 * with EBUSY and changes nothing; a control fd already in use takes more.
 */
static void test_attach_ctl_limit(void)
{
	char *p = map_pages(5);
	int ex[5], ctl[5], i, ok = 1;
	struct tether_attach a;

	for (i = 0; i < 5; i++) {
		ex[i] = open(TETHER_DEVICE, O_RDWR | O_CLOEXEC);
		ctl[i] = open(TETHER_DEVICE, O_RDWR | O_CLOEXEC);
		if (ex[i] < 0 || ctl[i] < 0 || ioctl(ctl[i], TETHER_IOC_CONTROL) ||
		    !reg_range(ex[i], p + i * P, P)) {
			fail("attach_ctl_limit", "setup: %s", strerror(errno));
			return;
		}
	}
	/* this process's efd is attached to the fake daemon's ctl: 3 more */
	for (i = 0; i < 3; i++) {
		a = (struct tether_attach){ .fd = ex[i] };
		if (ioctl(ctl[i], TETHER_IOC_ATTACH, &a)) {
			fail("attach_ctl_limit", "ATTACH to control fd %d of 4: %s", i + 2,
			     strerror(errno));
			ok = 0;
		}
	}
	a = (struct tether_attach){ .fd = ex[3] };
	errno = 0;
	if (ok && (ioctl(ctl[3], TETHER_IOC_ATTACH, &a) != -1 || errno != EBUSY)) {
		fail("attach_ctl_limit", "ATTACH to a 5th control fd of one process: %s, want EBUSY",
		     errno ? strerror(errno) : "success");
		ok = 0;
	}
	/* nothing changed: ex[3] is still free, and ctl[0] (in use) takes it */
	a = (struct tether_attach){ .fd = ex[3] };
	if (ok && ioctl(ctl[0], TETHER_IOC_ATTACH, &a)) {
		fail("attach_ctl_limit", "ATTACH to a control fd in use after EBUSY: %s",
		     strerror(errno));
		ok = 0;
	}
	/* a closed control fd frees its slot */
	close(ctl[1]);
	ctl[1] = -1;
	a = (struct tether_attach){ .fd = ex[4] };
	if (ok && ioctl(ctl[4], TETHER_IOC_ATTACH, &a)) {
		fail("attach_ctl_limit", "ATTACH after a control fd closed: %s", strerror(errno));
		ok = 0;
	}
	if (ok)
		pass("attach_ctl_limit");
	for (i = 0; i < 5; i++) {
		if (ctl[i] >= 0)
			close(ctl[i]);
		close(ex[i]);
	}
	munmap(p, 5 * P);
}

/* ------------------------------------------------------------------ */
/* (j) the sequence protocol (MARK seq / READ_RETRY)                   */

static void test_seq(void)
{
	struct child c;
	struct dreply r, r2;
	int st;

	if (spawn_child(&c, 2, 4, NULL) || attach_child(&c)) {
		fail("seq", "setup failed");
		return;
	}
	r = dcall(D_MARK, c.rid[1], 0, P, -1);
	r2 = dcall(D_RETRY, c.rid[1], r.v, 0, -1);
	if (r.ret || (r.v & 1) || r2.ret)
		fail("seq_stable", "MARK seq %llu, READ_RETRY -> %lld (%s)",
		     (unsigned long long)r.v, (long long)r2.ret, strerror(r2.err));
	else
		pass("seq_stable");

	/* an invalidation in progress (child blocked on range 0) */
	dmark(c.rid[0], 0, 4 * P);
	dcall(D_ACKDELAY, 600, 0, 0, -1);
	dcall(D_CLEAR, 0, 0, 0, -1);
	child_cmd(&c, 'm', 0, 0);
	if (wait_ev(c.rid[0], TETHER_KIND_BEGIN, 1, 5000) < 0)
		fail("seq_window_open", "no BEGIN for the child's munmap");
	/* the page being invalidated (a disjoint one stays even: seq_disjoint_*) */
	r2 = dcall(D_MARK, c.rid[0], 0, P, -1);
	if (r2.ret || !(r2.v & 1))
		fail("seq_window_open", "MARK during an invalidation returned seq %llu (even)",
		     (unsigned long long)r2.v);
	else
		pass("seq_window_open");
	{
		char d;
		struct pollfd pfd = { c.sock, POLLIN, 0 };

		if (poll(&pfd, 1, 10000 * scale) != 1 || read(c.sock, &d, 1) != 1)
			fail("seq", "child did not finish its munmap");
	}
	r2 = dcall(D_RETRY, c.rid[0], r2.v, 0, -1);
	if (r2.ret != -1 || r2.err != EAGAIN)
		fail("seq_retry_after_window", "READ_RETRY of an odd seq did not say EAGAIN");
	else
		pass("seq_retry_after_window");
	/* the window closed: a new MARK gives an even seq that holds */
	dcall(D_ACKDELAY, 0, 0, 0, -1);
	r = dcall(D_MARK, c.rid[1], 0, P, -1);
	r2 = dcall(D_RETRY, c.rid[1], r.v, 0, -1);
	if (r.ret || (r.v & 1) || r2.ret)
		fail("seq_settles", "after the window closed: seq %llu, retry %lld (%s)",
		     (unsigned long long)r.v, (long long)r2.ret, strerror(r2.err));
	else
		pass("seq_settles");
	/* a forwarded invalidation of range 1 (page 0 is marked) moves its seq */
	child_cmd(&c, 'u', 1, 10000 * scale);	/* unmaps page 0 of both ranges */
	r2 = dcall(D_RETRY, c.rid[1], r.v, 0, -1);
	if (r2.ret != -1 || r2.err != EAGAIN)
		fail("seq_changed_by_invalidation", "READ_RETRY after a forwarded munmap -> %lld",
		     (long long)r2.ret);
	else
		pass("seq_changed_by_invalidation");
	child_cmd(&c, 'x', 0, 0);
	st = wait_child(c.pid, 10000 * scale);
	(void)st;
	close(c.sock);
}

/* ------------------------------------------------------------------ */
/* (k) issue 14: stalls on the event path                              */

/*
 * Defect 1: a blockable BEGIN that reaches the ack timeout before the
 * daemon read it used to be freed unread: the daemon saw only its END and
 * the mapper kept its copy.  It must still be delivered, flagged LATE
 * (not BLOCKABLE: nobody waits), before its END.
 */
static void test_late_begin(void)
{
	char *p = map_pages(8);
	uint64_t rid = reg_range(efd, p, 8 * P);
	double t0, t1;
	int n, b, e;

	if (!rid || dmark(rid, 0, 8 * P))
		return;
	if (set_timeout_ms(100)) {
		fail("late_begin_delivered", "cannot set ack_timeout_ms");
		return;
	}
	dcall(D_ACKDELAY, 0, 0, 0, -1);
	dcall(D_CLEAR, 0, 0, 0, -1);
	dcall(D_PAUSE, 1, 0, 0, -1);	/* the daemon reads nothing now */
	t0 = now_ms();
	munmap(p, P);			/* times out after 100 ms */
	t1 = now_ms();
	dcall(D_PAUSE, 0, 0, 0, -1);
	set_timeout_ms(5000);
	n = wait_ev(rid, TETHER_KIND_END, 1, 5000);
	if (n < 0)
		n = devents();
	b = find_ev(n, rid, TETHER_KIND_BEGIN, 0, P);
	e = find_ev(n, rid, TETHER_KIND_END, 0, P);
	info("late_begin: munmap took %.1f ms (timeout 100 ms), %d events", t1 - t0, n);
	if (b < 0) {
		fail("late_begin_delivered", "the timed-out BEGIN was never delivered (END: %s)",
		     e < 0 ? "no" : "yes");
		dump_events(n);
	} else if (e < 0 || e < b) {
		fail("late_begin_delivered", "END missing or before its BEGIN (BEGIN %d, END %d)", b, e);
		dump_events(n);
	} else if (!(evs[b].ev.flags & TETHER_EVF_LATE) ||
		   (evs[b].ev.flags & TETHER_EVF_BLOCKABLE)) {
		fail("late_begin_delivered", "BEGIN flags %#x, want LATE without BLOCKABLE",
		     evs[b].ev.flags);
	} else {
		pass("late_begin_delivered");
	}
	/* later mappings (thread stacks) may land on the freed page */
	dcall(D_UNMARK, rid, 0, 8 * P, -1);
}

/*
 * Defect 10: "an invalidation is in progress" was one count per mm, so one
 * stalled window made every MARK of every range of the exporter odd.  Only
 * an invalidation overlapping the marked interval may.
 */
static void test_seq_disjoint(void)
{
	struct child c;
	struct dreply r0, r1, ra, rr;
	char d;
	int n;

	if (spawn_child(&c, 2, 4, NULL) || attach_child(&c)) {
		fail("seq_disjoint", "setup failed");
		return;
	}
	dmark(c.rid[0], 0, P);
	dcall(D_ACKDELAY, -1, 0, 0, -1);	/* hold the BEGIN */
	dcall(D_CLEAR, 0, 0, 0, -1);
	child_cmd(&c, 'm', 0, 0);		/* munmap page 0 of range 0 */
	n = wait_ev(c.rid[0], TETHER_KIND_BEGIN, 1, 5000);
	if (n < 0) {
		fail("seq_disjoint", "no BEGIN for the child's munmap");
	} else {
		r0 = dcall(D_MARK, c.rid[0], 2 * P, P, -1);	/* same range, disjoint */
		r1 = dcall(D_MARK, c.rid[1], 0, P, -1);		/* another range */
		ra = dcall(D_MARK, c.rid[0], 0, P, -1);		/* the invalidated page */
		if (r0.ret || (r0.v & 1))
			fail("seq_disjoint_same_range_even",
			     "MARK of pages 2 of range A while page 0 is being invalidated: seq %llu (odd)",
			     (unsigned long long)r0.v);
		else
			pass("seq_disjoint_same_range_even");
		if (r1.ret || (r1.v & 1))
			fail("seq_disjoint_other_range_even",
			     "MARK of range B while range A is being invalidated: seq %llu (odd)",
			     (unsigned long long)r1.v);
		else
			pass("seq_disjoint_other_range_even");
		if (ra.ret || !(ra.v & 1))
			fail("seq_overlapping_odd",
			     "MARK of the page being invalidated: seq %llu (even)",
			     (unsigned long long)ra.v);
		else
			pass("seq_overlapping_odd");
		dcall(D_ACKNOW, 0, 0, 0, -1);
		{
			struct pollfd pfd = { c.sock, POLLIN, 0 };

			if (poll(&pfd, 1, 10000 * scale) != 1 || read(c.sock, &d, 1) != 1)
				fail("seq_disjoint", "child did not finish its munmap");
		}
		/* range B's read was never touched: its even seq holds */
		rr = dcall(D_RETRY, c.rid[1], r1.v, 0, -1);
		if (!(r1.v & 1) && rr.ret)
			fail("seq_disjoint_retry_holds", "READ_RETRY of range B: %s",
			     strerror(rr.err));
		else if (!(r1.v & 1))
			pass("seq_disjoint_retry_holds");
	}
	dcall(D_ACKDELAY, 0, 0, 0, -1);
	child_cmd(&c, 'x', 0, 0);
	wait_child(c.pid, 10000 * scale);
	close(c.sock);
}

struct madv_arg {
	char *p;
	int go[2];	/* a byte on go[1] starts the madvise */
	int rc;
};

static void *madv_thread(void *a)
{
	struct madv_arg *m = a;
	char x;

	if (read(m->go[0], &x, 1) != 1)
		return NULL;
	m->rc = madvise(m->p, P, MADV_DONTNEED);
	return NULL;
}

static void madv_go(struct madv_arg *m)
{
	char x = 1;

	if (write(m->go[1], &x, 1) != 1)
		perror("madv_go");
}

/*
 * Defect 11: two identical concurrent invalidations (two threads
 * madvise(DONTNEED) the same marked page): each END names its own BEGIN,
 * so the daemon closes the right window whichever finishes first.
 */
static void test_end_pairs(void)
{
	char *p = map_pages(4);
	uint64_t rid = reg_range(efd, p, 4 * P);
	struct madv_arg a1 = { p, { -1, -1 }, -1 }, a2 = { p, { -1, -1 }, -1 };
	pthread_t t1, t2;
	uint64_t id1, id2;
	int n, e1, e2, ok = 0;

	if (!rid || dmark(rid, 0, P) || pipe(a1.go) || pipe(a2.go))
		return;
	/*
	 * Both threads exist before the first madvise: creating one maps its
	 * stack (mmap_lock for write), which would wait behind the first
	 * madvise's read lock until its ack timed out.
	 */
	if (pthread_create(&t1, NULL, madv_thread, &a1) ||
	    pthread_create(&t2, NULL, madv_thread, &a2)) {
		fail("end_pairs_with_begin", "pthread_create");
		exit(1);
	}
	dcall(D_ACKDELAY, -1, 0, 0, -1);
	dcall(D_CLEAR, 0, 0, 0, -1);
	madv_go(&a1);
	n = wait_ev(rid, TETHER_KIND_BEGIN, 1, 5000);
	madv_go(&a2);
	if (n < 0) {
		fail("end_pairs_with_begin", "first BEGIN not seen");
		dcall(D_ACKNOW, 0, 0, 0, -1);
		goto join;
	}
	id1 = evs[nth_ev(n, rid, TETHER_KIND_BEGIN, 0)].ev.event_id;
	n = wait_ev(rid, TETHER_KIND_BEGIN, 2, 5000);
	if (n < 0) {
		fail("end_pairs_with_begin", "second BEGIN not seen");
		dcall(D_ACKNOW, 0, 0, 0, -1);
		goto join;
	}
	id2 = evs[nth_ev(n, rid, TETHER_KIND_BEGIN, 1)].ev.event_id;
	/* the second finishes first */
	dcall(D_ACKNOW, (int64_t)id2, 0, 0, -1);
	if (wait_ev(rid, TETHER_KIND_END, 1, 5000) < 0) {
		fail("end_pairs_with_begin", "no END after acking the second BEGIN");
		dcall(D_ACKNOW, 0, 0, 0, -1);
		goto join;
	}
	dcall(D_ACKNOW, (int64_t)id1, 0, 0, -1);
	n = wait_ev(rid, TETHER_KIND_END, 2, 5000);
	if (n < 0) {
		fail("end_pairs_with_begin", "no second END");
		goto join;
	}
	e1 = nth_ev(n, rid, TETHER_KIND_END, 0);
	e2 = nth_ev(n, rid, TETHER_KIND_END, 1);
	if (evs[e1].ev.begin_id != id2 || evs[e2].ev.begin_id != id1) {
		fail("end_pairs_with_begin",
		     "BEGINs %llu, %llu (acked second first); ENDs name %llu, %llu (want %llu, %llu)",
		     (unsigned long long)id1, (unsigned long long)id2,
		     (unsigned long long)evs[e1].ev.begin_id,
		     (unsigned long long)evs[e2].ev.begin_id,
		     (unsigned long long)id2, (unsigned long long)id1);
		dump_events(n);
	} else {
		ok = 1;
	}
join:
	pthread_join(t1, NULL);
	pthread_join(t2, NULL);
	close(a1.go[0]);
	close(a1.go[1]);
	close(a2.go[0]);
	close(a2.go[1]);
	if (ok && (a1.rc || a2.rc))
		fail("end_pairs_with_begin", "madvise failed");
	else if (ok)
		pass("end_pairs_with_begin");
	dcall(D_ACKDELAY, 0, 0, 0, -1);
}

static int set_fail_alloc(int on)
{
	FILE *f = fopen("/sys/module/tether/parameters/test_fail_event_alloc", "w");

	if (!f)
		return -1;
	fprintf(f, "%d\n", on);
	return fclose(f);
}

/*
 * Defect 9: when no event can be allocated (the test hook fails every
 * notifier allocation, reserve included), a blockable invalidation used
 * to become an OVERFLOW that nobody waited for: munmap returned while
 * mappers still held the pages.  It must wait for the daemon's ack of the
 * OVERFLOW (flagged BLOCKABLE), i.e. until every range was invalidated.
 */
static void test_alloc_failure(void)
{
	char *p = map_pages(4);
	uint64_t rid = reg_range(efd, p, 4 * P);
	const double delay = 200;
	double t0, t1;
	int n, i, o = -1;

	if (!rid || dmark(rid, 0, 4 * P))
		return;
	dcall(D_ACKDELAY, (int64_t)delay, 0, 0, -1);
	dcall(D_CLEAR, 0, 0, 0, -1);
	if (set_fail_alloc(1)) {
		fail("alloc_failure_waits", "cannot set test_fail_event_alloc");
		return;
	}
	t0 = now_ms();
	munmap(p, P);
	t1 = now_ms();
	set_fail_alloc(0);
	n = devents();
	for (i = 0; i < n; i++)
		if (evs[i].ev.kind == TETHER_KIND_OVERFLOW)
			o = i;
	info("alloc_failure: munmap took %.1f ms (ack delay %.0f ms), %d events", t1 - t0,
	     delay, n);
	if (o < 0) {
		fail("alloc_failure_waits", "no OVERFLOW");
		dump_events(n);
	} else if (!(evs[o].ev.flags & TETHER_EVF_BLOCKABLE)) {
		fail("alloc_failure_waits",
		     "OVERFLOW not flagged BLOCKABLE: munmap took %.1f ms, did not wait for the daemon",
		     t1 - t0);
	} else if (t1 - t0 < delay || !evs[o].t_ack || evs[o].t_ack > t1) {
		fail("alloc_failure_waits", "munmap took %.1f ms, returned before the OVERFLOW's ack",
		     t1 - t0);
	} else if (t1 - t0 > delay + 1500 * scale) {
		fail("alloc_failure_waits", "munmap took %.1f ms", t1 - t0);
	} else {
		pass("alloc_failure_waits");
	}
	dcall(D_ACKDELAY, 0, 0, 0, -1);
	dcall(D_UNMARK, rid, 0, 4 * P, -1);
}

/* ------------------------------------------------------------------ */
/* (i) G4: OOM kill of an exporter in a memory cgroup                  */

static void test_oom(void)
{
	const char *cg = "/sys/fs/cgroup/tether_oom";
	struct child c;
	char path[256];
	int n, st, rel, nb, i;
	double t0, t1;
	FILE *f;

	f = fopen("/sys/fs/cgroup/cgroup.controllers", "r");
	if (!f) {
		fail("oom_setup", "no cgroup2 at /sys/fs/cgroup");
		return;
	}
	fclose(f);
	f = fopen("/sys/fs/cgroup/cgroup.subtree_control", "w");
	if (!f || fprintf(f, "+memory\n") < 0 || fclose(f)) {
		fail("oom_setup", "cannot enable the memory controller");
		return;
	}
	mkdir(cg, 0755);
	snprintf(path, sizeof(path), "%s/memory.max", cg);
	f = fopen(path, "w");
	if (!f || fprintf(f, "%d\n", 48 << 20) < 0 || fclose(f)) {
		fail("oom_setup", "cannot set memory.max");
		return;
	}
	snprintf(path, sizeof(path), "%s/memory.swap.max", cg);
	f = fopen(path, "w");
	if (f) {
		fprintf(f, "0\n");
		fclose(f);
	}
	snprintf(path, sizeof(path), "%s/cgroup.procs", cg);
	if (spawn_child(&c, 1, 16, path) || attach_child(&c)) {
		fail("oom_setup", "child setup failed");
		return;
	}
	dmark(c.rid[0], 0, 16 * P);
	set_timeout_ms(4000);
	dcall(D_ACKDELAY, -1, 0, 0, -1);	/* a silent daemon */
	dcall(D_CLEAR, 0, 0, 0, -1);
	t0 = now_ms();
	child_cmd(&c, 'o', 0, 0);
	st = wait_child(c.pid, 60000 * scale);
	t1 = now_ms();
	set_timeout_ms(5000);
	dcall(D_ACKDELAY, 0, 0, 0, -1);
	close(c.sock);
	usleep(200000);
	n = devents();
	rel = find_ev(n, c.rid[0], TETHER_KIND_RELEASE, 0, 16 * P);
	nb = -1;
	for (i = 0; i < n; i++)
		if (evs[i].ev.range_id == c.rid[0] && evs[i].ev.kind == TETHER_KIND_BEGIN &&
		    !(evs[i].ev.flags & TETHER_EVF_BLOCKABLE))
			nb = i;
	info("oom: child died after %.0f ms, %d events", t1 - t0, n);
	dump_events(n);
	if (st < 0 || !WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL)
		fail("oom_kill_release", "child was not OOM-killed (status %#x)", st);
	else if (rel < 0)
		fail("oom_kill_release", "no RELEASE for the OOM-killed exporter");
	else
		pass("oom_kill_release");
	if (nb < 0)
		fail("oom_nonblockable_begin",
		     "the OOM reaper's non-blockable invalidation was not forwarded");
	else
		pass("oom_nonblockable_begin");
	rmdir(cg);
}


/* ------------------------------------------------------------------ */
/* (j) events are charged to the exporter's memory cgroup              */

static int cg_write(const char *cg, const char *file, const char *val)
{
	char path[256];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", cg, file);
	f = fopen(path, "w");
	if (!f || fprintf(f, "%s\n", val) < 0 || fclose(f))
		return -1;
	return 0;
}

static long long cg_current(const char *cg)
{
	char path[256];
	long long v = -1;
	FILE *f;

	snprintf(path, sizeof(path), "%s/memory.current", cg);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (fscanf(f, "%lld", &v) != 1)
		v = -1;
	fclose(f);
	return v;
}

/*
 * An exporter in cgroup A registers many ranges; the fake daemon, moved
 * into cgroup B, holds the last reference to its exporter fd and closes
 * it: the exporter's teardown allocates one RELEASE per range on the
 * daemon's thread, and (paused) the daemon leaves them queued.  They must
 * be charged to A, the exporter's, not to B, whose task happened to
 * allocate them (SLAB_ACCOUNT alone charged B: ~768 KiB here).
 */
static void test_memcg_charge(void)
{
	const char *a = "/sys/fs/cgroup/tether_kev_exporter";
	const char *b = "/sys/fs/cgroup/tether_kev_daemon";
	enum { NR = 4096 };
	long long b0, b1, a0, a1;
	int sv[2], fd = -1, dfd;
	struct dreply r;
	char pid[32], cmd;
	pid_t child;

	if (cg_write("/sys/fs/cgroup", "cgroup.subtree_control", "+memory")) {
		fail("memcg_setup", "cannot enable the memory controller");
		return;
	}
	mkdir(a, 0755);
	mkdir(b, 0755);
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv)) {
		fail("memcg_setup", "socketpair: %s", strerror(errno));
		return;
	}
	child = fork();
	if (child == 0) {
		char *p;
		int efd, i;

		close(sv[0]);
		snprintf(pid, sizeof(pid), "%d", getpid());
		if (cg_write(a, "cgroup.procs", pid))
			_exit(5);
		efd = open(TETHER_DEVICE, O_RDWR | O_CLOEXEC);
		p = map_pages(NR);
		if (efd < 0 || !p)
			_exit(6);
		for (i = 0; i < NR; i++) {
			struct tether_range_reg reg = { .start = (uintptr_t)p + i * P, .len = P };

			if (ioctl(efd, TETHER_IOC_REGISTER_RANGE, &reg))
				_exit(7);
		}
		if (send_msg(sv[1], "f", 1, efd))
			_exit(8);
		close(efd);
		(void)!read(sv[1], &cmd, 1);	/* stays alive, in A, until told */
		_exit(0);
	}
	close(sv[1]);
	if (recv_msg(sv[0], &cmd, 1, &fd) != 1 || fd < 0) {
		fail("memcg_setup", "the exporter child did not send its fd");
		goto out;
	}
	r = dcall(D_ATTACH, 0, 0, 0, fd);
	close(fd);
	if (r.ret) {
		fail("memcg_setup", "ATTACH: %s", strerror(r.err));
		goto out;
	}
	dfd = (int)r.v2;
	snprintf(pid, sizeof(pid), "%d", dpid);
	if (cg_write(b, "cgroup.procs", pid)) {
		fail("memcg_setup", "cannot move the fake daemon into %s", b);
		goto out;
	}
	dcall(D_PAUSE, 1, 0, 0, -1);
	dcall(D_CLEAR, 0, 0, 0, -1);
	a0 = cg_current(a);
	b0 = cg_current(b);
	r = dcall(D_CLOSEFD, dfd, 0, 0, -1);	/* the last reference: teardown */
	a1 = cg_current(a);
	b1 = cg_current(b);
	info("memcg: %d RELEASEs queued; exporter's cgroup %+lld bytes, daemon's %+lld bytes",
	     NR, a1 - a0, b1 - b0);
	if (r.ret)
		fail("memcg_charge", "closing the exporter fd: %s", strerror(r.err));
	else if (b1 - b0 >= 384 << 10)
		fail("memcg_charge",
		     "the daemon's cgroup was charged %lld bytes for the exporter's %d events",
		     b1 - b0, NR);
	else
		pass("memcg_charge");
	dcall(D_PAUSE, 0, 0, 0, -1);
	usleep(200000);
	dcall(D_CLEAR, 0, 0, 0, -1);
out:
	snprintf(pid, sizeof(pid), "%d", dpid);	/* the daemon back */
	cg_write("/sys/fs/cgroup", "cgroup.procs", pid);
	close(sv[0]);	/* the child exits */
	wait_child(child, 10000);
	rmdir(a);
	rmdir(b);
}

/* ------------------------------------------------------------------ */
/* direct attachments: the exporter's own pages, zapped by the notifier */

static sigjmp_buf probe_jmp;

static void probe_signal(int sig)
{
	siglongjmp(probe_jmp, sig);
}

/*
 * Read (@write 0) or write @val at @a.  Returns 0, or the signal the
 * access got: SIGBUS (the module refused it), SIGSEGV (the VMA forbids it).
 */
static int probe(volatile char *a, int write, char val, char *out)
{
	struct sigaction sa = { .sa_handler = probe_signal }, oldbus, oldsegv;
	int ret;

	sigemptyset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, &oldbus);
	sigaction(SIGSEGV, &sa, &oldsegv);
	ret = sigsetjmp(probe_jmp, 1);
	if (ret) {
		/* the signal number */
	} else if (write) {
		*a = val;
	} else {
		char v = *a;

		if (out)
			*out = v;
	}
	sigaction(SIGBUS, &oldbus, NULL);
	sigaction(SIGSEGV, &oldsegv, NULL);
	return ret;
}

/* DIRECT_ATTACH by the fake daemon; returns the fd, or -1 with errno. */
static int ddirect(uint64_t rid, uint64_t off, uint64_t len, uint32_t flags)
{
	struct dcmd cmd = { D_DIRECT, (int64_t)rid, (int64_t)off, (int64_t)len, flags };
	struct dreply r = { .ret = -1, .err = EPIPE };
	int fd = -1;

	if (send_msg(dsock, &cmd, sizeof(cmd), -1) ||
	    recv_msg(dsock, &r, sizeof(r), &fd) != sizeof(r)) {
		fail("daemon", "lost the fake daemon (DIRECT_ATTACH): %s", strerror(errno));
		exit(1);
	}
	if (r.ret) {
		errno = (int)r.err;
		return -1;
	}
	return fd;
}

static char *map_direct(int fd, size_t len, int prot, off_t off)
{
	char *q = mmap(NULL, len, prot, MAP_SHARED, fd, off);

	return q == MAP_FAILED ? NULL : q;
}

/*
 * Stores of the exporter are seen at once through the attachment, and
 * the other way round: in the exporter's own process, and in another one.
 */
static void test_direct_stores(void)
{
	char *p = map_pages(4);
	uint64_t rid = reg_range(efd, p, 4 * P);
	int fd, sv[2], st;
	char *q, c;
	pid_t pid;

	dcall(D_PAUSE, 0, 0, 0, -1);	/* exits below wait for RELEASE acks */
	dcall(D_ACKDELAY, 0, 0, 0, -1);
	fd = rid ? ddirect(rid, 0, 4 * P, TETHER_DIRECT_WRITE) : -1;
	q = fd >= 0 ? map_direct(fd, 4 * P, PROT_READ | PROT_WRITE, 0) : NULL;

	if (!q) {
		fail("direct_stores", "DIRECT_ATTACH / mmap: %s", strerror(errno));
		return;
	}
	if (q[0] != 0x5a || q[3 * P + 7] != 0x5a) {
		fail("direct_stores", "attachment reads %#x, exporter holds 0x5a", q[0]);
		goto out;
	}
	p[100] = 1;
	q[2 * P + 5] = 7;
	if (q[100] != 1 || p[2 * P + 5] != 7) {
		fail("direct_stores", "same process: saw %d and %d, want 1 and 7", q[100],
		     p[2 * P + 5]);
		goto out;
	}
	/* Another process: the attachment fd is inherited, the mapping made there. */
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv))
		goto out;
	pid = fork();
	if (pid == 0) {
		char *cq = map_direct(fd, 4 * P, PROT_READ | PROT_WRITE, 0);

		close(sv[0]);
		if (!cq || read(sv[1], &c, 1) != 1)
			_exit(2);
		c = cq[P + 1];			/* the parent stored 42 */
		cq[P + 2] = 43;			/* the parent must see it */
		if (write(sv[1], &c, 1) != 1)
			_exit(3);
		_exit(0);
	}
	close(sv[1]);
	p[P + 1] = 42;
	c = 0;
	if (write(sv[0], &c, 1) != 1 || read(sv[0], &c, 1) != 1) {
		fail("direct_stores", "lost the attaching child");
	} else if (c != 42 || p[P + 2] != 43) {
		fail("direct_stores", "other process: saw %d (want 42), exporter saw %d (want 43)",
		     c, p[P + 2]);
	} else {
		pass("direct_stores");
	}
	close(sv[0]);
	waitpid(pid, &st, 0);
out:
	munmap(q, 4 * P);
	close(fd);
}

/*
 * Memory the exporter never touched: a read through the attachment maps
 * the zero page read-only; the exporter's first store (a COW from the
 * zero page) is seen at once, and a store through the attachment after
 * that read lands in the exporter's page, never in the zero page.
 */
static void test_direct_zero_page(void)
{
	char *p = mmap(NULL, 2 * P, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uint64_t rid = p != MAP_FAILED ? reg_range(efd, p, 2 * P) : 0;
	int fd = rid ? ddirect(rid, 0, 2 * P, TETHER_DIRECT_WRITE) : -1;
	char *q = fd >= 0 ? map_direct(fd, 2 * P, PROT_READ | PROT_WRITE, 0) : NULL;
	char *z = mmap(NULL, P, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (!q || z == MAP_FAILED) {
		fail("direct_zero_page", "DIRECT_ATTACH / mmap: %s", strerror(errno));
		return;
	}
	if (q[10] != 0 || q[P + 10] != 0) {
		fail("direct_zero_page", "untouched memory reads %d %d", q[10], q[P + 10]);
	} else if ((p[10] = 5, q[10] != 5)) {
		fail("direct_zero_page", "exporter's first store not seen: %d", q[10]);
	} else if ((q[P + 10] = 6, p[P + 10] != 6)) {
		fail("direct_zero_page", "store after a read of the zero page: exporter sees %d",
		     p[P + 10]);
	} else if (z[P / 2] != 0) {
		fail("direct_zero_page", "the zero page changed: %d", z[P / 2]);
	} else {
		pass("direct_zero_page");
	}
	munmap(z, P);
	munmap(q, 2 * P);
	close(fd);
}

/*
 * The exporter (another process) unmaps a page: once its munmap returned,
 * the attachment's next access faults and gets SIGBUS, it never reads
 * the freed page; a new page mapped there is what the attachment shows.
 */
static void test_direct_munmap(void)
{
	struct child c;
	char *q = NULL, v = 0;
	int fd = -1;

	if (spawn_child(&c, 1, 2, NULL) || attach_child(&c)) {
		fail("direct_munmap", "could not set up a child exporter");
		return;
	}
	fd = ddirect(c.rid[0], 0, 2 * P, TETHER_DIRECT_WRITE);
	q = fd >= 0 ? map_direct(fd, 2 * P, PROT_READ | PROT_WRITE, 0) : NULL;
	if (!q) {
		fail("direct_munmap", "DIRECT_ATTACH / mmap: %s", strerror(errno));
		goto out;
	}
	if (probe(q, 0, 0, &v) || v != 0x5a) {	/* mapped now */
		fail("direct_munmap", "first read: %s %#x", v ? "got" : "SIGBUS", v);
		goto out;
	}
	if (child_cmd(&c, 'r', 1, 10000 * scale)) {
		fail("direct_munmap", "child could not remap");
		goto out;
	}
	v = 0;
	if (probe(q, 0, 0, &v) || v != 0x33) {
		fail("direct_munmap", "after the exporter mapped a new page: %s %#x (want 0x33)",
		     v ? "read" : "SIGBUS", v);
		goto out;
	}
	if (child_cmd(&c, 'm', 1, 10000 * scale)) {
		fail("direct_munmap", "child could not munmap");
		goto out;
	}
	v = 0;
	if (probe(q, 0, 0, &v) != SIGBUS) {
		fail("direct_munmap", "read %#x (no SIGBUS) from a page the exporter unmapped", v);
	} else if (probe(q + P, 0, 0, &v) || v != 0x5a) {
		fail("direct_munmap", "the page the exporter kept: %#x (want 0x5a)", v);
	} else {
		pass("direct_munmap");
	}
out:
	if (q)
		munmap(q, 2 * P);
	if (fd >= 0)
		close(fd);
	child_cmd(&c, 'x', 0, 0);
	wait_child(c.pid, 10000 * scale);
	close(c.sock);
}

/*
 * mprotect by the exporter zaps the attachment: a write the exporter may
 * not do any more gets SIGBUS, reads go on; writable again, writes land.
 */
static void test_direct_mprotect(void)
{
	char *p = map_pages(2);
	uint64_t rid = reg_range(efd, p, 2 * P);
	int fd = rid ? ddirect(rid, 0, 2 * P, TETHER_DIRECT_WRITE) : -1;
	char *q = fd >= 0 ? map_direct(fd, 2 * P, PROT_READ | PROT_WRITE, 0) : NULL;
	char v = 0;

	if (!q) {
		fail("direct_mprotect", "DIRECT_ATTACH / mmap: %s", strerror(errno));
		return;
	}
	q[0] = 1;			/* a writable pte now */
	if (mprotect(p, P, PROT_READ)) {
		fail("direct_mprotect", "mprotect: %s", strerror(errno));
	} else if (probe(q, 1, 2, NULL) != SIGBUS) {
		fail("direct_mprotect", "no SIGBUS for a write through the attachment after "
		     "the exporter's mprotect(PROT_READ) returned (exporter sees %d)", p[0]);
	} else if (probe(q, 0, 0, &v) || v != 1) {
		fail("direct_mprotect", "read after mprotect(PROT_READ): %s %d",
		     v ? "got" : "SIGBUS", v);
	} else if (mprotect(p, P, PROT_READ | PROT_WRITE) || probe(q, 1, 3, NULL) ||
		   p[0] != 3) {
		fail("direct_mprotect", "writable again: exporter sees %d (want 3)", p[0]);
	} else {
		pass("direct_mprotect");
	}
	munmap(q, 2 * P);
	close(fd);
}

static int write_param(const char *name, const char *val)
{
	char path[128];
	FILE *f;

	snprintf(path, sizeof(path), "/sys/module/tether/parameters/%s", name);
	f = fopen(path, "w");
	if (!f)
		return -1;
	if (fputs(val, f) < 0) {
		fclose(f);
		return -1;
	}
	return fclose(f) ? -1 : 0;
}

static long read_param(const char *name)
{
	char path[128], buf[32] = "";
	FILE *f;

	snprintf(path, sizeof(path), "/sys/module/tether/parameters/%s", name);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (!fgets(buf, sizeof(buf), f))
		buf[0] = 0;
	fclose(f);
	return buf[0] ? strtol(buf, NULL, 10) : -1;
}

struct race_reader {
	char *q;
	int sig;
	char v;
};

static void *race_read(void *a)
{
	struct race_reader *r = a;

	r->sig = probe(r->q, 0, 0, &r->v);
	return NULL;
}

/*
 * A fault looked the exporter's page up; before it inserts it, the
 * exporter unmaps the page (the module's test_direct_hold hook stops the
 * fault there; the test waits until it is held, no timing).  The insert
 * comes after the zap, so the fault must take it back itself: the read
 * gets SIGBUS, never the freed page.
 */
static void test_direct_fault_race(void)
{
	struct race_reader rr = { 0 };
	pthread_t th;
	struct child c;
	double end;
	int fd = -1, started = 0;

	if (spawn_child(&c, 1, 1, NULL) || attach_child(&c)) {
		fail("direct_fault_race", "could not set up a child exporter");
		return;
	}
	fd = ddirect(c.rid[0], 0, P, 0);
	rr.q = fd >= 0 ? map_direct(fd, P, PROT_READ, 0) : NULL;
	if (!rr.q || write_param("test_direct_hold", "1")) {
		fail("direct_fault_race", "setup: %s", strerror(errno));
		goto out;
	}
	if (pthread_create(&th, NULL, race_read, &rr)) {
		fail("direct_fault_race", "pthread_create");
		goto out_release;
	}
	started = 1;
	end = now_ms() + 10000 * scale;
	while (read_param("test_direct_held") != 1 && now_ms() < end)
		usleep(1000);	/* polls for a state; no race depends on it */
	if (read_param("test_direct_held") != 1) {
		fail("direct_fault_race", "the fault never reached the hook");
		goto out_release;
	}
	if (child_cmd(&c, 'm', 1, 10000 * scale)) {
		fail("direct_fault_race", "child could not munmap");
		goto out_release;
	}
	write_param("test_direct_hold", "0");
	pthread_join(th, NULL);
	started = 0;
	if (rr.sig != SIGBUS)
		fail("direct_fault_race", "read %#x (signal %d) from a page the exporter unmapped "
		     "while the fault held it", rr.v, rr.sig);
	else
		pass("direct_fault_race");
out_release:
	write_param("test_direct_hold", "0");
	if (started)
		pthread_join(th, NULL);
out:
	if (rr.q)
		munmap(rr.q, P);
	if (fd >= 0)
		close(fd);
	child_cmd(&c, 'x', 0, 0);
	wait_child(c.pid, 10000 * scale);
	close(c.sock);
}

/*
 * The export is withdrawn (the daemon closes the exporter fd) while the
 * exporter lives on: the attachment is zapped and later accesses get
 * SIGBUS, although the exporter's memory is still there.
 */
static void test_direct_export_closed(void)
{
	struct child c;
	char *q = NULL, v = 0;
	struct dreply r;
	int fd = -1;

	if (spawn_child(&c, 1, 1, NULL) || attach_child(&c)) {
		fail("direct_export_closed", "could not set up a child exporter");
		return;
	}
	fd = ddirect(c.rid[0], 0, P, TETHER_DIRECT_WRITE);
	q = fd >= 0 ? map_direct(fd, P, PROT_READ | PROT_WRITE, 0) : NULL;
	if (!q || probe(q, 1, 0x11, NULL)) {
		fail("direct_export_closed", "attachment: %s", strerror(errno));
		goto out;
	}
	/* The daemon's copy must be the last: the child closes its own
	 * after sending it, and may not have run since. */
	if (child_cmd(&c, 'n', 1, 10000 * scale)) {
		fail("direct_export_closed", "child does not answer");
		goto out;
	}
	r = dcall(D_CLOSEFD, c.dfd, 0, 0, -1);
	if (r.ret) {
		fail("direct_export_closed", "close in the daemon: %s", strerror(r.err));
	} else {
		int nfd = ddirect(c.rid[0], 0, P, 0), nerr = errno;
		int sig = probe(q, 0, 0, &v);

		if (nfd >= 0)
			close(nfd);
		if (sig != SIGBUS || nfd >= 0 || nerr != ENOENT)
			fail("direct_export_closed", "after the export was withdrawn: read %s %#x, "
			     "a new DIRECT_ATTACH %s (want SIGBUS, ENOENT)",
			     sig == SIGBUS ? "SIGBUS" : "got", v,
			     nfd >= 0 ? "worked" : strerror(nerr));
		else
			pass("direct_export_closed");
	}
out:
	if (q)
		munmap(q, P);
	if (fd >= 0)
		close(fd);
	child_cmd(&c, 'x', 0, 0);
	wait_child(c.pid, 10000 * scale);
	close(c.sock);
}

/* The exporter exits: every later access of its attachment gets SIGBUS. */
static void test_direct_exit(void)
{
	struct child c;
	char *q = NULL, v = 0;
	int fd = -1, st;

	if (spawn_child(&c, 1, 1, NULL) || attach_child(&c)) {
		fail("direct_exit", "could not set up a child exporter");
		return;
	}
	fd = ddirect(c.rid[0], 0, P, 0);
	q = fd >= 0 ? map_direct(fd, P, PROT_READ, 0) : NULL;
	if (!q || probe(q, 0, 0, &v) || v != 0x5a) {
		fail("direct_exit", "read-only attachment: %s, read %#x", strerror(errno), v);
		goto out;
	}
	child_cmd(&c, 'x', 0, 0);
	st = wait_child(c.pid, 10000 * scale);
	if (st < 0 || !WIFEXITED(st))
		fail("direct_exit", "child did not exit");
	else if (probe(q, 0, 0, &v) != SIGBUS)
		fail("direct_exit", "read %#x (no SIGBUS) after the exporter exited", v);
	else
		pass("direct_exit");
out:
	if (q)
		munmap(q, P);
	if (fd >= 0)
		close(fd);
	close(c.sock);
}

/* Bad DIRECT_ATTACH requests and mappings: a clear errno, nothing created. */
static void test_direct_bad_args(void)
{
	char *p = map_pages(4);
	uint64_t rid = reg_range(efd, p, 4 * P);
	static const struct {	/* x86-64: 4096-byte pages */
		const char *what;
		uint64_t off, len;
		uint32_t flags;
		int want;
	} bad[] = {
		{ "unknown flags", 0, 4096, 2, EINVAL },
		{ "unaligned offset", 1, 4096, 0, EINVAL },
		{ "zero length", 0, 0, 0, EINVAL },
		{ "past the range", 4096, 4 * 4096, 0, EINVAL },
		{ "wrapping", 4096, (uint64_t)-4096, 0, EINVAL },
	};
	struct tether_direct dr = { .range_id = rid, .len = P };
	int probe_fd = dup(0), fd, ctl, ok = 1;
	unsigned int i;
	char *q;

	close(probe_fd);	/* the lowest free fd: must stay free */
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		fd = ddirect(rid, bad[i].off, bad[i].len, bad[i].flags);
		if (fd >= 0 || errno != bad[i].want) {
			fail("direct_bad_args", "%s: %s (want %s)", bad[i].what,
			     fd >= 0 ? "created" : strerror(errno), strerror(bad[i].want));
			ok = 0;
		}
	}
	if (ddirect(0xfffffff0ULL, 0, P, 0) >= 0 || errno != ENOENT) {
		fail("direct_bad_args", "unknown range: %s (want ENOENT)", strerror(errno));
		ok = 0;
	}
	if (ioctl(efd, TETHER_IOC_DIRECT_ATTACH, &dr) == 0 || errno != EBADFD) {
		fail("direct_bad_args", "on an exporter fd: %s (want EBADFD)", strerror(errno));
		ok = 0;
	}
	/* A control fd the exporter did not hand its fd to. */
	ctl = open(TETHER_DEVICE, O_RDWR | O_CLOEXEC);
	if (ctl < 0 || ioctl(ctl, TETHER_IOC_CONTROL) ||
	    ioctl(ctl, TETHER_IOC_DIRECT_ATTACH, &dr) == 0 || errno != ENOENT) {
		fail("direct_bad_args", "from a foreign control fd: %s (want ENOENT)",
		     strerror(errno));
		ok = 0;
	}
	if (ctl >= 0)
		close(ctl);
	fd = dup(0);
	if (fd != probe_fd) {
		fail("direct_bad_args", "a rejected call left fd %d open", probe_fd);
		ok = 0;
	}
	close(fd);

	/* Mappings of a read-only attachment of 2 pages at offset 1 page. */
	fd = ddirect(rid, P, 2 * P, 0);
	if (fd < 0) {
		fail("direct_bad_args", "read-only DIRECT_ATTACH: %s", strerror(errno));
		return;
	}
	if (mmap(NULL, P, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0) != MAP_FAILED ||
	    errno != EACCES) {
		fail("direct_bad_args", "writable mapping of a read-only attachment: %s",
		     strerror(errno));
		ok = 0;
	}
	if (mmap(NULL, P, PROT_READ, MAP_PRIVATE, fd, 0) != MAP_FAILED || errno != EINVAL) {
		fail("direct_bad_args", "MAP_PRIVATE: %s (want EINVAL)", strerror(errno));
		ok = 0;
	}
	if (mmap(NULL, 2 * P, PROT_READ, MAP_SHARED, fd, P) != MAP_FAILED || errno != EINVAL) {
		fail("direct_bad_args", "mapping past the end: %s (want EINVAL)", strerror(errno));
		ok = 0;
	}
	q = map_direct(fd, 2 * P, PROT_READ, 0);
	if (!q) {
		fail("direct_bad_args", "read-only mapping: %s", strerror(errno));
		ok = 0;
	} else {
		p[P] = 9;	/* offset 0 of the attachment is page 1 of the range */
		if (q[0] != 9) {
			fail("direct_bad_args", "offset: attachment shows %d (want 9)", q[0]);
			ok = 0;
		}
		if (!mprotect(q, P, PROT_READ | PROT_WRITE) || errno != EACCES) {
			fail("direct_bad_args", "mprotect(PROT_WRITE) of a read-only attachment: "
			     "%s (want EACCES)", strerror(errno));
			ok = 0;
		}
		if (probe(q, 1, 1, NULL) != SIGSEGV) {
			fail("direct_bad_args", "a write through a read-only attachment got no SIGSEGV");
			ok = 0;
		}
		munmap(q, 2 * P);
	}
	close(fd);
	if (ok)
		pass("direct_bad_args");
}

/* ------------------------------------------------------------------ */

/* ------------------------------------------------------------------ */
/* (m) issue 14: TETHER_IOC_WRITE                                      */

/*
 * The fake daemon's WRITE of @len bytes of @fill at @off of range @rid,
 * checked against @seq; @mode: 0 plain, 1 flags, 2 no pieces, 3 an
 * unreadable buffer, 4 an unreadable piece array, 5 too many pieces,
 * 6 two pieces (the second one byte after the first), 7 a stale count
 * in `written` on input.  Returns the ioctl's result, errno in *err and
 * the count written in *written.
 */
static int dwrite(uint64_t rid, uint64_t off, uint64_t len, int fill, int mode, uint64_t seq,
		  int *err, uint64_t *written)
{
	struct dcmd cmd = { D_WRITE, (int64_t)rid, (int64_t)off,
			    (int64_t)(len | (uint64_t)mode << 32 | (uint64_t)(fill & 0xff) << 40),
			    (int64_t)seq };
	struct dreply r = { .ret = -1, .err = EPIPE };

	if (send_msg(dsock, &cmd, sizeof(cmd), -1) ||
	    recv_msg(dsock, &r, sizeof(r), NULL) != sizeof(r)) {
		fail("daemon", "lost the fake daemon (WRITE): %s", strerror(errno));
		exit(1);
	}
	*err = r.ret ? (int)r.err : 0;
	*written = r.v;
	return (int)r.ret;
}

/* @len bytes of child @c's memory at @addr (the test is its parent, root) */
static int peek(struct child *c, uint64_t addr, void *buf, size_t len)
{
	struct iovec l = { buf, len }, rm = { (void *)(uintptr_t)addr, len };

	return process_vm_readv(c->pid, &l, 1, &rm, 1, 0) == (ssize_t)len ? 0 : -1;
}

/* every byte of @len at child @c's @addr is @v */
static int all_bytes(struct child *c, uint64_t addr, size_t len, int v)
{
	static char b[1 << 16];
	size_t i;

	if (len > sizeof(b) || peek(c, addr, b, len))
		return 0;
	for (i = 0; i < len; i++)
		if (b[i] != (char)v)
			return 0;
	return 1;
}

static uint64_t dseq(uint64_t rid, uint64_t off, uint64_t len)
{
	return dcall(D_MARK, (int64_t)rid, (int64_t)off, (int64_t)len, -1).v;
}

/*
 * A write that passed the daemon's checks and is made only after the
 * exporter replaced the mapping (mmap MAP_FIXED, mremap: both hold
 * mmap_lock for writing across the ack, so a process_vm_writev waiting
 * for that lock landed in the NEW mapping) is refused with ESTALE and
 * writes nothing; a write with a current sequence lands, at any byte
 * alignment and across a page boundary.
 */
static void test_write(void)
{
	struct child c;
	uint64_t seq, written;
	int err, ret;

	if (spawn_child(&c, 1, 4, NULL) || attach_child(&c)) {
		fail("write", "could not set up a child exporter");
		return;
	}
	dcall(D_ACKDELAY, 0, 0, 0, -1);
	seq = dseq(c.rid[0], 0, 4 * P);
	ret = dwrite(c.rid[0], 100, 10, 0x77, 0, seq, &err, &written);
	if (ret || written != 10 || !all_bytes(&c, c.addr[0] + 100, 10, 0x77) ||
	    !all_bytes(&c, c.addr[0], 100, 0x5a) || !all_bytes(&c, c.addr[0] + 110, 10, 0x5a))
		fail("write_lands", "WRITE -> %d (%s), written %llu", ret, strerror(err),
		     (unsigned long long)written);
	else
		pass("write_lands");
	ret = dwrite(c.rid[0], 3 * P - 5, 10, 0x78, 6, seq, &err, &written);
	if (ret || written != 20 || !all_bytes(&c, c.addr[0] + 3 * P - 5, 10, 0x78) ||
	    !all_bytes(&c, c.addr[0] + 3 * P + 5, 1, 0x5a) ||
	    !all_bytes(&c, c.addr[0] + 3 * P + 6, 10, 0x78))
		fail("write_pieces_across_pages", "WRITE -> %d (%s), written %llu", ret,
		     strerror(err), (unsigned long long)written);
	else
		pass("write_pieces_across_pages");

	/* MAP_FIXED over page 0 after the sequence was taken */
	seq = dseq(c.rid[0], 0, 4 * P);
	if (child_cmd(&c, 'r', 1, 10000 * scale)) {
		fail("write_after_map_fixed_refused", "child could not remap");
		goto out;
	}
	ret = dwrite(c.rid[0], 0, P, 0x11, 0, seq, &err, &written);
	if (ret != -1 || err != ESTALE || written || !all_bytes(&c, c.addr[0], P, 0x33))
		fail("write_after_map_fixed_refused",
		     "WRITE with the sequence from before mmap(MAP_FIXED) -> %d (%s), written %llu; "
		     "the new mapping %s", ret, strerror(err), (unsigned long long)written,
		     all_bytes(&c, c.addr[0], P, 0x33) ? "is intact" : "was written");
	else
		pass("write_after_map_fixed_refused");
	/* the same sequence with a fresh one is fine again */
	seq = dseq(c.rid[0], 0, 4 * P);
	ret = dwrite(c.rid[0], 0, 1, 0x12, 0, seq | 1, &err, &written);
	if (ret != -1 || err != ESTALE || !all_bytes(&c, c.addr[0], 1, 0x33))
		fail("write_odd_seq_refused", "WRITE with an odd sequence -> %d (%s)", ret,
		     strerror(err));
	else
		pass("write_odd_seq_refused");

	/* mremap of page 1 over page 0 */
	seq = dseq(c.rid[0], 0, 4 * P);
	if (child_cmd(&c, 'M', 1, 10000 * scale)) {
		fail("write_after_mremap_refused", "child could not mremap");
		goto out;
	}
	ret = dwrite(c.rid[0], 0, P, 0x13, 0, seq, &err, &written);
	if (ret != -1 || err != ESTALE || written || !all_bytes(&c, c.addr[0], P, 0x5a))
		fail("write_after_mremap_refused",
		     "WRITE with the sequence from before mremap -> %d (%s), written %llu",
		     ret, strerror(err), (unsigned long long)written);
	else
		pass("write_after_mremap_refused");

	/* protections: read-only page 0 (page 1 is gone since the mremap) */
	if (child_cmd(&c, 'p', 1, 10000 * scale)) {
		fail("write_read_only", "child could not mprotect");
		goto out;
	}
	seq = dseq(c.rid[0], 0, 4 * P);
	ret = dwrite(c.rid[0], 0, 8, 0x14, 0, seq, &err, &written);
	if (ret != -1 || err != EACCES || written || !all_bytes(&c, c.addr[0], P, 0x5a))
		fail("write_read_only", "WRITE into a PROT_READ page -> %d (%s), written %llu",
		     ret, strerror(err), (unsigned long long)written);
	else
		pass("write_read_only");
	ret = dwrite(c.rid[0], P, 8, 0x14, 0, seq, &err, &written);
	if (ret != -1 || err != EFAULT || written)
		fail("write_unmapped", "WRITE where nothing is mapped -> %d (%s), written %llu",
		     ret, strerror(err), (unsigned long long)written);
	else
		pass("write_unmapped");
	child_cmd(&c, 'w', 1, 10000 * scale);

	/* bad input: a clear error, nothing written */
	seq = dseq(c.rid[0], 0, 4 * P);
	{
		static const struct { const char *what; uint64_t rid, off, len; int mode, want; } b[] = {
			{ "flags", 0, 0, 8, 1, EINVAL },
			{ "no pieces", 0, 0, 8, 2, EINVAL },
			{ "too many pieces", 0, 0, 8, 5, EINVAL },
			{ "empty piece", 0, 0, 0, 0, EINVAL },
			{ "past the range", 0, 4 * 4096 - 4, 8, 0, EINVAL },
			{ "wrapping", 0, ~0ull - 3, 8, 0, EINVAL },
			{ "over TETHER_WRITE_MAX_LEN", 0, 0, (1 << 20) + 1, 0, EINVAL },
			{ "unreadable buffer", 0, 0, 8, 3, EFAULT },
			{ "unreadable pieces", 0, 0, 8, 4, EFAULT },
			{ "unknown range", 999999, 0, 8, 0, ENOENT },
			{ "range id 0", ~0ull, 0, 8, 0, ENOENT },
		};
		int i, bad = 0;

		for (i = 0; i < (int)(sizeof(b) / sizeof(b[0])); i++) {
			uint64_t rid = b[i].rid == 0 ? c.rid[0] : b[i].rid == ~0ull ? 0 : b[i].rid;

			ret = dwrite(rid, b[i].off, b[i].len, 0x15, b[i].mode, seq, &err, &written);
			if (ret != -1 || err != b[i].want || written) {
				fail("write_bad_args", "%s: %d (%s), written %llu, want %s", b[i].what,
				     ret, strerror(err), (unsigned long long)written,
				     strerror(b[i].want));
				bad = 1;
			}
		}
		/* on an exporter fd, and from a control fd it is not attached to */
		{
			struct tether_write_seg sg = { 0, 8, (uintptr_t)&bad };
			struct tether_write w = { .range_id = c.rid[0], .seq = seq,
						  .segs = (uintptr_t)&sg, .nr_segs = 1 };
			int other = open(TETHER_DEVICE, O_RDWR | O_CLOEXEC);

			if (ioctl(efd, TETHER_IOC_WRITE, &w) != -1 || errno != EBADFD) {
				fail("write_bad_args", "WRITE on an exporter fd: %s", strerror(errno));
				bad = 1;
			}
			if (other < 0 || ioctl(other, TETHER_IOC_CONTROL) ||
			    ioctl(other, TETHER_IOC_WRITE, &w) != -1 || errno != ENOENT) {
				fail("write_bad_args", "WRITE from a foreign control fd: %s",
				     strerror(errno));
				bad = 1;
			}
			if (other >= 0)
				close(other);
		}
		if (!all_bytes(&c, c.addr[0], P, 0x5a)) {
			fail("write_bad_args", "a refused WRITE changed the exporter's memory");
			bad = 1;
		}
		ret = dwrite(c.rid[0], 0, 8, 0x16, 7, seq, &err, &written);
		if (ret || written != 8 || !all_bytes(&c, c.addr[0], 8, 0x16)) {
			fail("write_bad_args", "a valid WRITE afterwards: %d (%s), written %llu", ret,
			     strerror(err), (unsigned long long)written);
			bad = 1;
		}
		if (!bad)
			pass("write_bad_args");
	}
	{
		struct tether_version v;

		if (ioctl(efd, TETHER_IOC_GET_VERSION, &v) || !(v.features & TETHER_FEAT_WRITE))
			fail("write_feature", "GET_VERSION does not announce TETHER_FEAT_WRITE");
		else
			pass("write_feature");
	}
out:
	child_cmd(&c, 'x', 0, 0);
	wait_child(c.pid, 10000 * scale);
	close(c.sock);
}

static void watchdog(int sig)
{
	(void)sig;
	printf("FAIL watchdog: module_test did not finish in time\n");
	fflush(stdout);
	_exit(1);
}

int main(void)
{
	struct tether_version v;
	struct dreply r;
	const char *s = getenv("TETHER_TEST_SCALE");

	setvbuf(stdout, NULL, _IOLBF, 0);
	P = sysconf(_SC_PAGESIZE);
	if (s && atof(s) > 0)
		scale = atof(s);
	signal(SIGALRM, watchdog);
	alarm((unsigned int)(240 * scale));

	efd = open(TETHER_DEVICE, O_RDWR | O_CLOEXEC);
	if (efd < 0) {
		fail("open", "%s: %s", TETHER_DEVICE, strerror(errno));
		return 1;
	}
	if (ioctl(efd, TETHER_IOC_GET_VERSION, &v) || v.abi_version != TETHER_ABI_VERSION ||
	    v.event_size != sizeof(struct tether_event)) {
		fail("version", "GET_VERSION: abi %u event_size %u", v.abi_version, v.event_size);
		return 1;
	}
	pass("version");
	set_timeout_ms(5000);

	start_daemon();
	{
		char *p = map_pages(1);

		reg_range(efd, p, P);	/* binds efd as an exporter fd */
	}
	r = dcall(D_ATTACH, 0, 0, 0, efd);
	if (r.ret) {
		fail("attach", "ATTACH: %s", strerror(r.err));
		return 1;
	}
	pass("attach");

	test_blocking();
	test_unmarked();
	test_exit_release();
	test_ctl_close();
	test_timeout();
	test_timeout_param();
	test_bad_args();
	test_cow();
	test_many();
	test_one_munmap_many_exporters();
	test_attach_ctl_limit();
	test_seq();
	test_late_begin();
	test_seq_disjoint();
	test_end_pairs();
	test_alloc_failure();
	test_oom();
	test_memcg_charge();
	test_direct_stores();
	test_direct_zero_page();
	test_direct_munmap();
	test_direct_mprotect();
	test_direct_exit();
	test_direct_export_closed();
	test_direct_fault_race();
	test_direct_bad_args();
	test_write();

	{
		struct dcmd q = { D_QUIT, 0, 0, 0, 0 };

		send_msg(dsock, &q, sizeof(q), -1);
		close(dsock);
	}
	wait_child(dpid, 5000);
	printf("%d passed, %d failed\n", npass, nfail);
	return nfail ? 1 : 0;
}
