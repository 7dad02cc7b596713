// SPDX-License-Identifier: GPL-2.0
/*
 * ioctl_fuzz - a bounded random driver of /dev/tether for the VM tier's
 * module suite (guest-tests.sh runs it after module_test on every kernel;
 * the host then checks the guest's kernel log for BUG/WARN/oops/KASAN).
 *
 * From a seed it prints, it runs random sequences of: open (blocking or
 * not) and close of /dev/tether, every ioctl of the uapi header (the list
 * is made from kernel/include/uapi/linux/tether.h at build time,
 * tether_ioctls.h: an ioctl added there is fuzzed too) and unknown ones,
 * with arguments built from random and boundary values, addresses of its
 * own mappings, its fds and the range/event ids the module handed out,
 * and bad pointers; read/poll of events and ACKs of what it read; mmap of
 * tether fds (a direct attachment's fd included); munmap, mprotect,
 * madvise, mremap and stores on its mappings (the notifier's paths); fork
 * (the child goes on fuzzing for a moment, then exits or is killed).
 *
 *   ioctl_fuzz [SECONDS [SEED]]      (SEED 0 or absent: from the clock)
 *
 * Exit 0 when the time is up and every child exited or was killed as
 * planned; 1 if a child died of an unexpected signal (SIGSEGV in a fuzzer
 * means the kernel wrote where it must not); the kernel log is the rest
 * of the verdict. The ack timeout should be short (guest-tests.sh sets
 * ack_timeout_ms=100): a fuzzer that unmaps a page it marked waits for an
 * ack that only it could send.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <linux/tether.h>

static const struct {
	const char *name;
	unsigned long cmd;
} ioctls[] = {
#define X(n) { #n, n },
#include "tether_ioctls.h"
#undef X
};
#define NIOCTLS (sizeof(ioctls) / sizeof(ioctls[0]))

#define MAXFDS 12
#define MAXMAPS 8
#define MAXIDS 32
#define PAGE 4096UL

static uint64_t rng;
static uint64_t rnd(void)	/* xorshift64* */
{
	rng ^= rng >> 12;
	rng ^= rng << 25;
	rng ^= rng >> 27;
	return rng * 2685821657736338717ULL;
}
static unsigned int below(unsigned int n) { return n ? (unsigned int)(rnd() % n) : 0; }

static int fds[MAXFDS];
static struct { char *addr; size_t len; } maps[MAXMAPS];
static uint64_t ids[MAXIDS];	/* range, exporter and event ids seen */
static unsigned long ops, ioctl_ok, counts[64], oks[64];
static int is_child;

/*
 * A read through a tether fd's mapping may get SIGBUS, by design (a direct
 * attachment whose exporter unmapped or protected the page, or exited):
 * counted, not fatal.  Any other signal is.
 */
static sigjmp_buf bus_jmp;
static volatile sig_atomic_t bus_armed;
static unsigned long sigbus_seen;

static void on_sigbus(int sig)
{
	if (bus_armed)
		siglongjmp(bus_jmp, 1);
	signal(sig, SIG_DFL);
	raise(sig);
}

static void touch(void *m)
{
	bus_armed = 1;
	if (sigsetjmp(bus_jmp, 1) == 0)
		(void)*(volatile char *)m;
	else
		sigbus_seen++;
	bus_armed = 0;
}

/*
 * The parent's reads are bounded: poll said readable, but a forked child
 * sharing the fd may take the events first, and a blocking read would
 * then wait forever.  SIGALRM (no SA_RESTART) interrupts it.
 */
static unsigned long reads_interrupted;

static void on_sigalrm(int sig)
{
	(void)sig;
}

static void remember(uint64_t id)
{
	if (id && id < (1ULL << 40))
		ids[below(MAXIDS)] = id;
}

static int pick_fd(void)
{
	switch (below(12)) {
	case 0: return -1;
	case 1: return 0;	/* stdin: not a tether fd */
	case 2: return 1000;	/* not open */
	default: return fds[below(MAXFDS)];
	}
}

static uint64_t pick_addr(void)
{
	int i = below(MAXMAPS);

	if (!maps[i].addr)
		return below(2) ? 0 : 0x10000;
	switch (below(6)) {
	case 0: return (uint64_t)maps[i].addr + below(maps[i].len / PAGE + 1) * PAGE;
	case 1: return (uint64_t)maps[i].addr + below((unsigned int)maps[i].len);
	case 2: return (uint64_t)maps[i].addr + maps[i].len;
	default: return (uint64_t)maps[i].addr;
	}
}

/* One 64-bit slot of an ioctl argument. */
static uint64_t pick_value(void)
{
	static const uint64_t edge[] = {
		0, 1, 2, 3, 7, 4095, 4096, 4097, 8192, 1ULL << 20, 1ULL << 31,
		1ULL << 32, (1ULL << 47) - PAGE, 1ULL << 47, 0x7fffffffffffULL,
		0xffff800000000000ULL, 0xffffffff80000000ULL, ~0ULL - PAGE + 1,
		~0ULL, 0x7fffffffffffffffULL, 0x8000000000000000ULL,
	};
	switch (below(10)) {
	case 0: return rnd();
	case 1: case 2: return edge[below(sizeof(edge) / sizeof(edge[0]))];
	case 3: case 4: return pick_addr();
	case 5: return (uint64_t)below(64) * PAGE;
	case 6: return ids[below(MAXIDS)];
	case 7: return (uint64_t)(uint32_t)pick_fd() | (below(2) ? (uint64_t)rnd() << 32 : 0);
	case 8: return below(4);
	default: return ids[below(MAXIDS)] + below(3) - 1;
	}
}

/* An ioctl whose arguments plausible() knows. */
static int known(unsigned long cmd)
{
	return cmd == TETHER_IOC_GET_VERSION || cmd == TETHER_IOC_REGISTER_RANGE ||
	       cmd == TETHER_IOC_CONTROL || cmd == TETHER_IOC_ATTACH ||
	       cmd == TETHER_IOC_MARK_CACHED || cmd == TETHER_IOC_UNMARK_CACHED ||
	       cmd == TETHER_IOC_READ_RETRY || cmd == TETHER_IOC_ACK ||
	       cmd == TETHER_IOC_RANGE_INFO || cmd == TETHER_IOC_DIRECT_ATTACH;
}

/* A page-aligned [start, start + len) inside one of our mappings. */
static void pick_span(uint64_t *start, uint64_t *len)
{
	int i = below(MAXMAPS);
	size_t pages, first;

	if (!maps[i].addr) {
		*start = pick_addr() & ~(PAGE - 1);
		*len = PAGE;
		return;
	}
	pages = maps[i].len / PAGE;
	first = below(pages);
	*start = (uint64_t)maps[i].addr + first * PAGE;
	*len = PAGE * (1 + below(pages - first));
}

/*
 * Half the time, the arguments of a known ioctl are well formed (ids it
 * was handed, spans of its own mappings, its fds, zero flags and
 * padding), so that calls get past the argument checks to the state
 * behind them; one slot may still be noise.  An ioctl this does not know
 * (a new one in the header) gets structured noise only.
 */
static void plausible(unsigned long cmd, uint64_t *arg)
{
	memset(arg, 0, 64);
	if (cmd == TETHER_IOC_REGISTER_RANGE) {
		pick_span(&arg[0], &arg[1]);
	} else if (cmd == TETHER_IOC_ATTACH) {
		struct tether_attach *a = (struct tether_attach *)arg;

		a->fd = pick_fd();
	} else if (cmd == TETHER_IOC_MARK_CACHED || cmd == TETHER_IOC_UNMARK_CACHED ||
		   cmd == TETHER_IOC_DIRECT_ATTACH) {
		arg[0] = ids[below(MAXIDS)];
		arg[1] = below(4) ? 0 : (uint64_t)below(8) * PAGE;
		arg[2] = below(4) ? PAGE : PAGE * (1 + below(8));
		if (cmd == TETHER_IOC_DIRECT_ATTACH)
			arg[3] = below(2);	/* flags (WRITE), fd out */
	} else if (cmd == TETHER_IOC_READ_RETRY || cmd == TETHER_IOC_RANGE_INFO) {
		arg[0] = ids[below(MAXIDS)];
		arg[1] = below(2) ? 0 : 2 * below(8);
	} else if (cmd == TETHER_IOC_ACK) {
		arg[0] = ids[below(MAXIDS)];
	} else {
		return;
	}
	if (below(4) == 0)
		arg[below(4)] = pick_value();
}

static void do_ioctl(void)
{
	/* The argument: 8 slots of structured noise, in a page whose end may
	 * be the end of the mapping (a struct that runs off it: EFAULT). */
	static char *buf;
	uint64_t *arg;
	unsigned long cmd;
	unsigned int which = below(NIOCTLS + 2);
	int fd = pick_fd(), i, r;
	void *p;

	if (!buf) {
		buf = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (buf == MAP_FAILED)
			exit(3);
		munmap(buf + PAGE, PAGE);
	}
	arg = (uint64_t *)(buf + (below(4) ? 0 : PAGE - 8 * below(4)));
	for (i = 0; i < 8 && (char *)&arg[i] < buf + PAGE; i++)
		arg[i] = pick_value();
	if (which < NIOCTLS) {
		cmd = ioctls[which].cmd;
		counts[which]++;
		if (below(2) && (char *)arg + 64 <= buf + PAGE)
			plausible(cmd, arg);
	} else if (which == NIOCTLS) {	/* ours, an unknown number */
		cmd = _IOC(below(4), TETHER_IOC_MAGIC, 0x0a + below(0x40), below(64));
	} else {	/* a known number with the wrong size/direction */
		cmd = ioctls[below(NIOCTLS)].cmd ^ (1UL << (16 + below(14)));
	}
	switch (below(16)) {
	case 0: p = NULL; break;
	case 1: p = (void *)0xffff888000000000UL; break;	/* kernel half */
	case 2: p = buf + PAGE; break;				/* unmapped */
	default: p = arg;
	}
	r = ioctl(fd, cmd, p);
	if (r >= 0) {
		ioctl_ok++;
		if (which < NIOCTLS)
			oks[which]++;
		/* The ids it hands out; of an ioctl this does not know, any
		 * small output. */
		if (p == arg && cmd == TETHER_IOC_REGISTER_RANGE)
			remember(arg[3]);
		else if (p == arg && cmd == TETHER_IOC_ATTACH)
			remember(arg[2]);
		else if (p == arg && which < NIOCTLS && !known(cmd))
			for (i = 0; i < 4 && (char *)&arg[i] < buf + PAGE; i++)
				remember(arg[i]);
		/* A returned fd (a direct attachment): use it a little. */
		if (r > 2 && r != fd) {
			void *m = mmap(NULL, PAGE * (1 + below(4)),
				       below(2) ? PROT_READ : PROT_READ | PROT_WRITE,
				       MAP_SHARED, r, (off_t)below(4) * PAGE);
			if (m != MAP_FAILED) {
				touch(m);
				if (below(2))
					munmap(m, PAGE);
			}
			close(r);
		}
	}
	/* An fd handed back in the struct (DIRECT_ATTACH's fd field). */
	if (r >= 0 && p == arg && which < NIOCTLS &&
	    ioctls[which].cmd == TETHER_IOC_DIRECT_ATTACH) {
		struct tether_direct *d = (struct tether_direct *)arg;

		if (d->fd > 2 && fcntl(d->fd, F_GETFD) >= 0) {
			void *m = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, d->fd, 0);

			if (m != MAP_FAILED) {
				touch(m);
				if (below(2))
					munmap(m, PAGE);
			}
			close(d->fd);
		}
	}
}

static void do_read(void)
{
	struct tether_event ev[4];
	int fd = fds[below(MAXFDS)];
	struct pollfd p = { fd, POLLIN, 0 };
	ssize_t n;
	size_t len = below(4) ? sizeof(ev) : below(sizeof(ev) + 1);

	if (fd < 0 || poll(&p, 1, 0) != 1)
		return;
	if (!is_child)
		alarm(1);
	n = read(fd, below(16) ? (void *)ev : NULL, len);
	if (!is_child) {
		alarm(0);
		if (n < 0 && errno == EINTR)
			reads_interrupted++;
	}
	for (ssize_t i = 0; n > 0 && i < n / (ssize_t)sizeof(ev[0]); i++) {
		struct tether_ack ack = { ev[i].event_id, 0 };

		remember(ev[i].event_id);
		remember(ev[i].range_id);
		remember(ev[i].exporter_id);
		if (below(4))
			ioctl(fd, TETHER_IOC_ACK, &ack);
	}
}

static void do_map(void)
{
	int i = below(MAXMAPS);
	size_t len;

	if (maps[i].addr)
		munmap(maps[i].addr, maps[i].len);
	len = PAGE * (1 + below(16));
	maps[i].addr = mmap(NULL, len, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	maps[i].len = len;
	if (maps[i].addr == MAP_FAILED) {
		maps[i].addr = NULL;
		return;
	}
	for (size_t o = 0; o < len; o += PAGE)
		if (below(2))
			maps[i].addr[o] = (char)o;
}

static void do_mm(void)
{
	int i = below(MAXMAPS);
	size_t off, len;
	char *a;

	if (!maps[i].addr)
		return;
	off = below(maps[i].len / PAGE) * PAGE;
	len = PAGE * (1 + below((maps[i].len - off) / PAGE));
	a = maps[i].addr + off;
	switch (below(7)) {
	case 0:	/* a hole in the mapping; the rest stays ours */
		munmap(a, len);
		if (off == 0 && len == maps[i].len)
			maps[i].addr = NULL;
		break;
	case 1: madvise(a, len, MADV_DONTNEED); break;
	case 2: mprotect(a, len, below(2) ? PROT_READ : PROT_READ | PROT_WRITE); break;
	case 3: {
		void *n = mremap(maps[i].addr, maps[i].len, maps[i].len + PAGE, MREMAP_MAYMOVE);

		if (n != MAP_FAILED) {
			maps[i].addr = n;
			maps[i].len += PAGE;
		}
		break;
	}
	case 4: madvise(a, len, MADV_FREE); break;
	default:	/* stores (a COW break after fork) */
		if (mprotect(a, PAGE, PROT_READ | PROT_WRITE) == 0)
			((volatile char *)a)[below(PAGE)] = 1;
	}
}

static void do_open_close(void)
{
	int i = below(MAXFDS);

	if (fds[i] >= 0 && below(2)) {
		close(fds[i]);
		fds[i] = -1;
		return;
	}
	if (fds[i] >= 0)
		close(fds[i]);
	fds[i] = open("/dev/tether", O_RDWR | O_CLOEXEC | (below(2) ? O_NONBLOCK : 0));
	if (fds[i] >= 0 && below(3) == 0) {	/* a control fd at once */
		ioctl(fds[i], TETHER_IOC_CONTROL, 0);
	}
}

static void do_mmap_fd(void)
{
	int fd = fds[below(MAXFDS)];
	void *m;

	if (fd < 0)
		return;
	m = mmap(NULL, PAGE, PROT_READ, MAP_SHARED, fd, (off_t)below(2) * PAGE);
	if (m != MAP_FAILED) {
		touch(m);
		munmap(m, PAGE);
	}
}

static pid_t children[8];

static void reap(int block)
{
	for (int i = 0; i < 8; i++) {
		int st;
		pid_t r;

		if (!children[i])
			continue;
		r = waitpid(children[i], &st, block ? 0 : WNOHANG);
		if (r != children[i])
			continue;
		children[i] = 0;
		if (WIFSIGNALED(st) && WTERMSIG(st) != SIGKILL && WTERMSIG(st) != SIGALRM) {
			printf("FAIL ioctl_fuzz: a child died of signal %d (%s)\n",
			       WTERMSIG(st), strsignal(WTERMSIG(st)));
			exit(1);
		}
	}
}

static void do_fork(void)
{
	int i = below(8);
	pid_t pid;

	if (is_child || children[i])
		return;
	pid = fork();
	if (pid < 0)
		return;
	if (pid == 0) {	/* fuzz on for a moment with the inherited fds and maps */
		is_child = 1;
		rng ^= (uint64_t)getpid() << 17;
		signal(SIGALRM, SIG_DFL);	/* its deadline: 2 s */
		alarm(2);
		for (int n = 0, m = below(200); n < m; n++) {
			switch (below(5)) {
			case 0: do_ioctl(); break;
			case 1: do_mm(); break;
			case 2: do_read(); break;
			case 3: do_open_close(); break;
			default: do_map();
			}
		}
		_exit(0);
	}
	children[i] = pid;
	if (below(4) == 0)
		kill(pid, SIGKILL);	/* dies mid-way: exit_mmap with events queued */
}

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	double secs = argc > 1 ? atof(argv[1]) : 20;
	uint64_t seed = argc > 2 ? strtoull(argv[2], NULL, 0) : 0;
	double end;

	if (!seed)
		seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
	rng = seed ? seed : 1;
	printf("INFO ioctl_fuzz: seed %llu, %.0f s, %zu ioctls from the uapi header "
	       "(replay: ioctl_fuzz %.0f %llu)\n",
	       (unsigned long long)seed, secs, NIOCTLS, secs, (unsigned long long)seed);
	fflush(stdout);
	for (int i = 0; i < MAXFDS; i++)
		fds[i] = -1;
	signal(SIGBUS, on_sigbus);
	{
		struct sigaction sa = { .sa_handler = on_sigalrm };	/* no SA_RESTART */

		sigemptyset(&sa.sa_mask);
		sigaction(SIGALRM, &sa, NULL);
	}
	end = now() + secs;
	while (now() < end) {
		for (int n = 0; n < 64; n++, ops++) {
			switch (below(20)) {
			case 0: case 1: do_open_close(); break;
			case 2: case 3: do_map(); break;
			case 4: case 5: case 6: do_mm(); break;
			case 7: case 8: do_read(); break;
			case 9: do_mmap_fd(); break;
			case 10: do_fork(); break;
			default: do_ioctl();
			}
		}
		reap(0);
		/* Now and then start over: every fd closed, every map gone (the
		 * release paths with whatever state the fds had reached). */
		if (below(16) == 0) {
			for (int i = 0; i < MAXFDS; i++) {
				if (fds[i] >= 0)
					close(fds[i]);
				fds[i] = -1;
			}
		}
	}
	for (int i = 0; i < 8; i++)
		if (children[i])
			kill(children[i], SIGKILL);
	reap(1);
	for (int i = 0; i < MAXFDS; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	printf("INFO ioctl_fuzz: %lu operations, %lu ioctls succeeded, %lu SIGBUS on tether "
	       "mappings, %lu reads interrupted; per ioctl (ok/calls):", ops, ioctl_ok, sigbus_seen,
	       reads_interrupted);
	for (size_t i = 0; i < NIOCTLS; i++)
		printf(" %s=%lu/%lu", ioctls[i].name + 11, oks[i], counts[i]);
	printf("\nPASS ioctl_fuzz: seed %llu, %lu operations, no fuzzer process crashed\n",
	       (unsigned long long)seed, ops);
	return 0;
}
