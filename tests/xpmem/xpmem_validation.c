/*
 * xpmem_validation — XPMEM's argument validation and errno values, checked
 * through <xpmem.h> alone (no tether headers). Needs a reachable tetherd
 * ($TETHER_SOCKET), nothing else. It forks a producer child (before either
 * process touches the library) that exports a segment of another process.
 * As on XPMEM, the program also gets and attaches its own segment (stores
 * through the attachment reach its own memory; its own munmap and mprotect
 * of exported pages reach the attachment and return at once: the daemon,
 * not this process, acknowledges the window), and a child it forks gets
 * and attaches its parent's segment (the child inherits no segment, permit
 * or attachment of the parent).
 *
 * Prints "ok NAME" or "FAIL NAME: ..." per check and "N checks, M failed";
 * exits 0 only if every check passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <xpmem.h>

#define PAGE 4096
#define SEG_PAGES 16
#define SEG_SIZE (SEG_PAGES * PAGE)
#define FAILED_PTR ((void*)-1)

static int checks, failures;

static void report(int ok, const char* name, const char* fmt, ...) {
  ++checks;
  if (ok) {
    printf("ok %s\n", name);
  } else {
    ++failures;
    printf("FAIL %s: ", name);
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
  }
  fflush(stdout);
}

/* rc is the call's return value (as long long); want_err 0 means success. */
static void expect_rc(const char* name, long long rc, int want_err) {
  int err = errno;
  if (want_err == 0)
    report(rc >= 0, name, "returned %lld, errno %d (%s)", rc, err, strerror(err));
  else
    report(rc == -1 && err == want_err, name,
           "returned %lld errno %d (%s), wanted -1 errno %d (%s)", rc, rc == -1 ? err : 0,
           rc == -1 ? strerror(err) : "-", want_err, strerror(want_err));
}

static void expect_attach_fails(const char* name, void* p, int want_err) {
  int err = errno;
  report(p == FAILED_PTR && err == want_err, name,
         "returned %p errno %d (%s), wanted errno %d (%s)", p, p == FAILED_PTR ? err : 0,
         strerror(err), want_err, strerror(want_err));
}

static int mapped(const void* p) {
  unsigned char vec;
  return !(mincore((void*)((uintptr_t)p & ~(uintptr_t)(PAGE - 1)), PAGE, &vec) != 0 &&
           errno == ENOMEM);
}

static unsigned char byte_at(size_t off) { return (unsigned char)(off * 7 + 3); }

/* A read that may raise SIGBUS (or SIGSEGV): returns the byte, or -signo. */
static sigjmp_buf probe_jmp;
static void probe_handler(int sig) { siglongjmp(probe_jmp, sig); }
static int probe_read(const volatile unsigned char* p) {
  struct sigaction sa, old_bus, old_segv;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = probe_handler;
  sigaction(SIGBUS, &sa, &old_bus);
  sigaction(SIGSEGV, &sa, &old_segv);
  int r, sig = sigsetjmp(probe_jmp, 1);
  if (sig == 0)
    r = *p;
  else
    r = -sig;
  sigaction(SIGBUS, &old_bus, NULL);
  sigaction(SIGSEGV, &old_segv, NULL);
  return r;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Longest an exporter call over a page its own attachment holds may take:
 * far below the home's ack deadline (2 s) and tether.ko's ack timeout (5 s),
 * which a window that waited for this process would run into. */
#define OWN_CALL_MAX_S 1.0

/* A process gets and attaches its own segment, as XPMEM allows. */
static void own_segment(void) {
  const size_t n = 8;
  unsigned char* src =
      mmap(NULL, n * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (src == MAP_FAILED) {
    report(0, "own_setup", "mmap: %s", strerror(errno));
    return;
  }
  for (size_t i = 0; i < n * PAGE; ++i) src[i] = byte_at(i + 1);
  xpmem_segid_t seg = xpmem_make(src, n * PAGE, XPMEM_PERMIT_MODE, (void*)0600);
  expect_rc("own_make", seg, 0);
  xpmem_apid_t ap = xpmem_get(seg, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
  expect_rc("get_own_segment", ap, 0);
  if (seg < 0 || ap < 0) return;
  struct xpmem_addr a = {ap, 0};
  /* XPMEM: not on top of its own source range (EINVAL), elsewhere fine */
  expect_attach_fails("attach_own_over_source", xpmem_attach(a, 2 * PAGE, src + PAGE), EINVAL);
  a.offset = 2 * PAGE; /* source [2, 4) pages, target [3, 5) */
  expect_attach_fails("attach_own_over_source_offset", xpmem_attach(a, 2 * PAGE, src + 3 * PAGE),
                      EINVAL);
  report(src[PAGE] == byte_at(PAGE + 1) && src[3 * PAGE] == byte_at(3 * PAGE + 1),
         "attach_own_over_source_changes_nothing", "the source range changed");
  a.offset = 0;
  unsigned char* p = xpmem_attach(a, n * PAGE, NULL);
  report(p != FAILED_PTR && p != src, "attach_own_segment", "got %p (errno %d %s)", (void*)p, errno,
         strerror(errno));
  if (p == FAILED_PTR) return;
  int same = 1;
  for (size_t i = 0; i < n * PAGE; ++i) same &= p[i] == byte_at(i + 1);
  report(same, "attach_own_contents", "attachment differs from the exporter's memory");
  /* a store through the attachment reaches the exporter's own memory */
  p[PAGE + 9] = 0xa7;
  expect_rc("detach_own", xpmem_detach(p), 0);
  report(src[PAGE + 9] == 0xa7, "own_store_reaches_exporter", "byte is %#x after detach",
         src[PAGE + 9]);
  /* the exporter's later store is seen by a new attachment */
  src[2 * PAGE + 5] = 0x3c;
  p = xpmem_attach(a, n * PAGE, NULL);
  report(p != FAILED_PTR && p[2 * PAGE + 5] == 0x3c && p[PAGE + 9] == 0xa7,
         "own_reattach_sees_exporter_store", "errno %d", errno);
  if (p == FAILED_PTR) return;
  /* The exporter's own munmap and mprotect of pages its attachment holds
   * (the mprotected one dirty) reach the attachment, and return at once: the
   * window is acknowledged by the daemon, which never waits for this
   * process (with tether.ko it holds this process's mmap_lock meanwhile). */
  for (size_t i = 0; i < n; ++i) (void)*(volatile unsigned char*)(p + i * PAGE); /* all held */
  p[6 * PAGE] = 0x11;                                                            /* dirty */
  double t0 = now_s();
  int rc = mprotect(src + 6 * PAGE, PAGE, PROT_READ);
  double dt = now_s() - t0;
  report(rc == 0 && dt < OWN_CALL_MAX_S, "own_mprotect_returns",
         "mprotect of a page its own attachment holds dirty: rc %d, %.3f s", rc, dt);
  /* writable again, so that the page's write-back can land (a write-back
   * into a read-only page is refused, docs/invalidation.md) */
  mprotect(src + 6 * PAGE, PAGE, PROT_READ | PROT_WRITE);
  /* (page 7 stays clean: a dirty page whose address is gone is discarded,
   * and detach reports that) */
  t0 = now_s();
  rc = munmap(src + 7 * PAGE, PAGE);
  dt = now_s() - t0;
  report(rc == 0 && dt < OWN_CALL_MAX_S, "own_munmap_returns",
         "munmap of a page its own attachment holds: rc %d, %.3f s", rc, dt);
  int r = probe_read(p + 7 * PAGE);
  report(r == -SIGBUS, "own_munmap_reaches_attachment",
         "read of the unmapped page through the attachment: %d (want SIGBUS)", r);
  /* Not fenced: the rest of the attachment still reads, and still writes
   * back to the exporter. */
  r = probe_read(p + 4 * PAGE + 1);
  report(r == byte_at(4 * PAGE + 2), "own_attachment_survives", "page 4 reads %d", r);
  p[5 * PAGE] = 0x5e;
  expect_rc("detach_own_after_munmap", xpmem_detach(p), 0);
  report(src[5 * PAGE] == 0x5e && src[6 * PAGE] == 0x11, "own_stores_after_munmap_reach_exporter",
         "bytes are %#x %#x", src[5 * PAGE], src[6 * PAGE]);
  expect_rc("release_own", xpmem_release(ap), 0);
  expect_rc("remove_own_attached_segment", xpmem_remove(seg), 0);
  munmap(src, 7 * PAGE);
}

/* A child made by fork() gets and attaches its parent's segment; it
 * inherits none of the parent's segments, permits or attachments (the
 * parent holds a permit and an attachment of `peer`, another process's
 * segment). */
static void fork_child_gets_parent_segment(xpmem_segid_t peer) {
  unsigned char* src =
      mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (src == MAP_FAILED) return;
  for (size_t i = 0; i < 2 * PAGE; ++i) src[i] = byte_at(i + 5);
  xpmem_segid_t seg = xpmem_make(src, 2 * PAGE, XPMEM_PERMIT_MODE, (void*)0600);
  xpmem_apid_t ap = xpmem_get(peer, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
  struct xpmem_addr a = {ap, 0};
  unsigned char* held = ap > 0 ? xpmem_attach(a, 2 * PAGE, NULL) : FAILED_PTR;
  report(seg > 0 && held != FAILED_PTR && held[PAGE] == byte_at(PAGE), "fork_parent_setup",
         "segid %lld apid %lld errno %d", (long long)seg, (long long)ap, errno);
  if (held == FAILED_PTR) return;
  int res[2];
  if (pipe(res) != 0) return;
  pid_t pid = fork();
  if (pid == 0) {
    close(res[0]);
    checks = failures = 0;
    /* the parent's attachment is not inherited (as XPMEM's VM_DONTCOPY) */
    report(!mapped(held), "fork_child_attachment_not_inherited", "mapped in the child");
    expect_rc("fork_child_detach_inherited_address", xpmem_detach(held), 0);
    /* nor its permit, nor its segment */
    expect_rc("fork_child_release_parent_apid", xpmem_release(ap), EACCES);
    expect_attach_fails("fork_child_attach_parent_apid", xpmem_attach(a, PAGE, NULL), EACCES);
    expect_rc("fork_child_remove_parent_segment", xpmem_remove(seg), EACCES);
    /* but it may get and attach it, like any other process */
    xpmem_apid_t cap = xpmem_get(seg, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
    expect_rc("fork_child_get_parent_segment", cap, 0);
    struct xpmem_addr ca = {cap, 0};
    unsigned char* p = cap > 0 ? xpmem_attach(ca, 2 * PAGE, NULL) : FAILED_PTR;
    report(p != FAILED_PTR && p[PAGE + 1] == byte_at(PAGE + 6), "fork_child_attach_parent_segment",
           "errno %d (%s)", errno, strerror(errno));
    if (p != FAILED_PTR) {
      p[3] = 0xc4;
      expect_rc("fork_child_detach", xpmem_detach(p), 0);
    }
    expect_rc("fork_child_release", cap > 0 ? xpmem_release(cap) : -1, 0);
    int out[2] = {checks, failures};
    if (write(res[1], out, sizeof out) != sizeof out) _exit(3);
    fflush(stdout);
    _exit(0);
  }
  close(res[1]);
  int in[2] = {0, 1};
  ssize_t got = pid > 0 ? read(res[0], in, sizeof in) : -1;
  close(res[0]);
  int status = 0;
  if (pid > 0) waitpid(pid, &status, 0);
  report(got == sizeof in && WIFEXITED(status) && WEXITSTATUS(status) == 0, "fork_child_exit",
         "status %#x", status);
  checks += in[0];
  failures += in[1];
  /* the child's store reached the parent; the segment and the parent's own
   * attachment and permit are untouched by the child */
  report(src[3] == 0xc4, "fork_child_store_reaches_parent", "byte is %#x", src[3]);
  report(held[PAGE + 2] == byte_at(PAGE + 2), "fork_parent_attachment_intact", "wrong byte");
  expect_rc("fork_parent_detach", xpmem_detach(held), 0);
  expect_rc("fork_parent_release", xpmem_release(ap), 0);
  expect_rc("fork_parent_remove", xpmem_remove(seg), 0);
  munmap(src, 2 * PAGE);
}

/* The producer: exports SEG_SIZE bytes (mode 0644), sends the segid, then
 * obeys one-byte commands: 'r' remove (replies errno as a byte), 'q' quit. */
static int producer(int cmd_fd, int reply_fd) {
  unsigned char* mem =
      mmap(NULL, SEG_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) return 1;
  for (size_t i = 0; i < SEG_SIZE; ++i) mem[i] = byte_at(i);
  xpmem_segid_t segid = xpmem_make(mem, SEG_SIZE, XPMEM_PERMIT_MODE, (void*)0644);
  if (write(reply_fd, &segid, sizeof segid) != sizeof segid) return 1;
  if (segid < 0) return 1;
  char c;
  while (read(cmd_fd, &c, 1) == 1) {
    if (c == 'r') {
      unsigned char e = xpmem_remove(segid) == 0 ? 0 : (unsigned char)errno;
      if (write(reply_fd, &e, 1) != 1) return 1;
    } else if (c == 'q') {
      break;
    }
  }
  return 0;
}

int main(void) {
  setvbuf(stdout, NULL, _IOLBF, 0);
  int to_child[2], from_child[2];
  if (pipe(to_child) != 0 || pipe(from_child) != 0) return 2;
  pid_t child = fork();
  if (child < 0) return 2;
  if (child == 0) {
    close(to_child[1]);
    close(from_child[0]);
    _exit(producer(to_child[0], from_child[1]));
  }
  close(to_child[0]);
  close(from_child[1]);
  xpmem_segid_t peer = -1;
  if (read(from_child[0], &peer, sizeof peer) != sizeof peer || peer <= 0) {
    printf("FAIL producer: could not export (segid %lld)\n", (long long)peer);
    return 1;
  }

  /* ---- version ---- */
  report(xpmem_version() == XPMEM_CURRENT_VERSION, "version", "xpmem_version() = %#x",
         xpmem_version());

  /* ---- make ---- */
  unsigned char* buf =
      mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (buf == MAP_FAILED) return 2;
  memset(buf, 0x5a, 4 * PAGE);
  expect_rc("make_bad_permit_type_0", xpmem_make(buf, PAGE, 0, (void*)0600), EINVAL);
  expect_rc("make_bad_permit_type_2", xpmem_make(buf, PAGE, 2, (void*)0600), EINVAL);
  expect_rc("make_permit_value_beyond_0777", xpmem_make(buf, PAGE, XPMEM_PERMIT_MODE, (void*)01000),
            EINVAL);
  expect_rc("make_zero_size", xpmem_make(buf, 0, XPMEM_PERMIT_MODE, (void*)0600), EINVAL);
  expect_rc("make_unaligned_vaddr", xpmem_make(buf + 8, PAGE, XPMEM_PERMIT_MODE, (void*)0600),
            EINVAL);
  expect_rc("make_unaligned_size", xpmem_make(buf, PAGE + 1, XPMEM_PERMIT_MODE, (void*)0600),
            EINVAL);
  expect_rc("make_overflowing_size",
            xpmem_make(buf, (size_t)-1 - 2 * PAGE + 1, XPMEM_PERMIT_MODE, (void*)0600), EINVAL);
  expect_rc("make_beyond_user_space",
            xpmem_make((void*)0x7ffffffff000ul, 2 * PAGE, XPMEM_PERMIT_MODE, (void*)0600), EINVAL);
  /* Whole-address-space exports, as UCX, Open MPI and MPICH make them. */
  xpmem_segid_t whole = xpmem_make(NULL, XPMEM_MAXADDR_SIZE, XPMEM_PERMIT_MODE, (void*)0600);
  expect_rc("make_whole_address_space", whole, 0);
  expect_rc("remove_whole_address_space", whole >= 0 ? xpmem_remove(whole) : -1, 0);
  /* XPMEM adds vaddr + size with wrap-around: MAXADDR means "whole" only
   * from NULL; from any other address it is an overflowing size. */
  expect_rc("make_maxaddr_from_buffer",
            xpmem_make(buf, XPMEM_MAXADDR_SIZE, XPMEM_PERMIT_MODE, (void*)0600), EINVAL);
  xpmem_segid_t from_null =
      xpmem_make(NULL, 0x7ffffffff000ul, XPMEM_PERMIT_MODE, (void*)0666); /* Open MPI's */
  expect_rc("make_from_null", from_null, 0);
  expect_rc("remove_from_null", from_null >= 0 ? xpmem_remove(from_null) : -1, 0);
  expect_rc("make_maxaddr_from_beyond_user_space",
            xpmem_make((void*)0x7ffffffff000ul, XPMEM_MAXADDR_SIZE, XPMEM_PERMIT_MODE, (void*)0600),
            EINVAL);
  expect_rc("make_maxaddr_unaligned_vaddr",
            xpmem_make(buf + 8, XPMEM_MAXADDR_SIZE, XPMEM_PERMIT_MODE, (void*)0600), EINVAL);
  xpmem_segid_t own = xpmem_make(buf, 4 * PAGE, XPMEM_PERMIT_MODE, (void*)0600);
  expect_rc("make_ok", own, 0);

  /* ---- get ---- */
  expect_rc("get_zero_segid", xpmem_get(0, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL), EINVAL);
  expect_rc("get_negative_segid", xpmem_get(-5, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL), EINVAL);
  expect_rc("get_flags_both", xpmem_get(peer, XPMEM_RDONLY | XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL),
            EINVAL);
  expect_rc("get_flags_unknown", xpmem_get(peer, 0x10, XPMEM_PERMIT_MODE, NULL), EINVAL);
  expect_rc("get_bad_permit_type", xpmem_get(peer, XPMEM_RDWR, 0, NULL), EINVAL);
  expect_rc("get_bad_permit_type_2", xpmem_get(peer, XPMEM_RDWR, 2, NULL), EINVAL);
  expect_rc("get_unknown_segid", xpmem_get(12345, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL), ENOENT);
  expect_rc("get_unknown_segid_large",
            xpmem_get(((xpmem_segid_t)1 << 62) | 7, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL), ENOENT);
  xpmem_apid_t ap_rw = xpmem_get(peer, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
  expect_rc("get_rdwr", ap_rw, 0);
  xpmem_apid_t ap_ro = xpmem_get(peer, XPMEM_RDONLY, XPMEM_PERMIT_MODE, NULL);
  expect_rc("get_rdonly", ap_ro, 0);
  xpmem_apid_t ap_0 = xpmem_get(peer, 0, XPMEM_PERMIT_MODE, (void*)0600);
  expect_rc("get_flags_0_and_permit_value_ignored", ap_0, 0);

  /* ---- one's own segment, and fork ---- */
  own_segment();
  fork_child_gets_parent_segment(peer);

  /* ---- remove ---- */
  expect_rc("remove_zero", xpmem_remove(0), EINVAL);
  expect_rc("remove_negative", xpmem_remove(-1), EINVAL);
  expect_rc("remove_unknown", xpmem_remove(12345), ENOENT);
  expect_rc("remove_other_process_segment", xpmem_remove(peer), EACCES);
  expect_rc("remove_own", xpmem_remove(own), 0);
  expect_rc("remove_twice", xpmem_remove(own), ENOENT);
  expect_rc("get_removed_own", xpmem_get(own, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL), ENOENT);

  /* ---- attach ---- */
  struct xpmem_addr a = {ap_rw, 0};
  struct xpmem_addr bad = {0, 0};
  expect_attach_fails("attach_zero_apid", xpmem_attach(bad, PAGE, NULL), EINVAL);
  bad.apid = -3;
  expect_attach_fails("attach_negative_apid", xpmem_attach(bad, PAGE, NULL), EINVAL);
  bad.apid = ap_rw + 1000;
  expect_attach_fails("attach_unknown_apid", xpmem_attach(bad, PAGE, NULL), ENOENT);
  a.offset = 100;
  expect_attach_fails("attach_unaligned_offset", xpmem_attach(a, PAGE, NULL), EINVAL);
  a.offset = -PAGE;
  expect_attach_fails("attach_negative_offset", xpmem_attach(a, PAGE, NULL), EINVAL);
  a.offset = 0;
  expect_attach_fails("attach_unaligned_vaddr", xpmem_attach(a, PAGE, buf + 8), EINVAL);
  expect_attach_fails("attach_vaddr_outside_user_space",
                      xpmem_attach(a, PAGE, (void*)0x7ffffffff000ul), EINVAL);
  expect_attach_fails("attach_zero_size", xpmem_attach(a, 0, NULL), EINVAL);
  expect_attach_fails("attach_overflowing_size", xpmem_attach(a, (size_t)-1, NULL), EINVAL);
  expect_attach_fails("attach_too_large", xpmem_attach(a, SEG_SIZE + PAGE, NULL), EINVAL);
  a.offset = SEG_SIZE;
  expect_attach_fails("attach_offset_at_end", xpmem_attach(a, PAGE, NULL), EINVAL);
  a.offset = SEG_SIZE - PAGE;
  expect_attach_fails("attach_range_past_end", xpmem_attach(a, 2 * PAGE, NULL), EINVAL);
  a.offset = (off_t)1 << 62;
  expect_attach_fails("attach_huge_offset", xpmem_attach(a, PAGE, NULL), EINVAL);

  /* an unaligned size is rounded up to pages, as XPMEM does */
  a.offset = 2 * PAGE;
  unsigned char* p = xpmem_attach(a, 100, NULL);
  report(p != FAILED_PTR, "attach_unaligned_size_rounds_up", "errno %d (%s)", errno,
         strerror(errno));
  if (p != FAILED_PTR) {
    int same = 1;
    for (size_t i = 0; i < PAGE; ++i) same &= p[i] == byte_at(2 * PAGE + i);
    report(same, "attach_contents", "attached bytes differ from the exporter's");
    /* detach by an address inside the attachment */
    expect_rc("detach_inside", xpmem_detach(p + 123), 0);
    report(!mapped(p), "detach_unmaps", "still mapped after detach");
    expect_rc("detach_again_unmapped_is_ok", xpmem_detach(p), 0);
  }

  /* a fixed address, and no attaching over an attachment */
  unsigned char* hole = mmap(NULL, 8 * PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  a.offset = 0;
  unsigned char* f = xpmem_attach(a, 4 * PAGE, hole + 2 * PAGE);
  report(f == hole + 2 * PAGE, "attach_fixed_vaddr", "got %p want %p (errno %d)", (void*)f,
         (void*)(hole + 2 * PAGE), errno);
  if (f == hole + 2 * PAGE) {
    report(f[PAGE + 5] == byte_at(PAGE + 5), "attach_fixed_contents", "wrong byte");
    expect_attach_fails("attach_over_attachment", xpmem_attach(a, 2 * PAGE, hole + 4 * PAGE),
                        EINVAL);
    /* a read-only permit maps read-only but maps */
    struct xpmem_addr r = {ap_ro, PAGE};
    unsigned char* ro = xpmem_attach(r, PAGE, NULL);
    report(ro != FAILED_PTR && ro[0] == byte_at(PAGE), "attach_rdonly", "errno %d", errno);
    struct xpmem_addr z = {ap_0, 0};
    unsigned char* z0 = xpmem_attach(z, PAGE, NULL);
    report(z0 != FAILED_PTR && z0[7] == byte_at(7), "attach_flags_0", "errno %d", errno);
    /* release detaches the permit's attachments */
    expect_rc("release_with_attachment", xpmem_release(ap_ro), 0);
    report(ro == FAILED_PTR || !mapped(ro), "release_detaches", "still mapped after release");
    expect_rc("detach_fixed", xpmem_detach(f), 0);
  }
  /* detach of memory that is not an attachment */
  expect_rc("detach_not_an_attachment", xpmem_detach(buf), EINVAL);
  expect_rc("detach_unmapped", xpmem_detach(hole + 2 * PAGE), 0);

  /* ---- release ---- */
  expect_rc("release_zero", xpmem_release(0), EINVAL);
  expect_rc("release_negative", xpmem_release(-2), EINVAL);
  expect_rc("release_unknown", xpmem_release(ap_rw + 1000), ENOENT);
  expect_rc("release_twice", xpmem_release(ap_ro), ENOENT);
  expect_rc("release_flags_0", xpmem_release(ap_0), 0);
  struct xpmem_addr gone = {ap_ro, 0};
  expect_attach_fails("attach_released_apid", xpmem_attach(gone, PAGE, NULL), ENOENT);

  /* ---- a segment removed by its maker ---- */
  unsigned char e = 255;
  if (write(to_child[1], "r", 1) != 1 || read(from_child[0], &e, 1) != 1) e = 254;
  report(e == 0, "producer_remove", "producer's xpmem_remove failed: errno %d", e);
  expect_rc("get_removed", xpmem_get(peer, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL), ENOENT);
  expect_rc("remove_removed", xpmem_remove(peer), ENOENT);
  expect_rc("release_after_remove", xpmem_release(ap_rw), 0);

  if (write(to_child[1], "q", 1) != 1) return 2;
  int status = 0;
  waitpid(child, &status, 0);
  report(WIFEXITED(status) && WEXITSTATUS(status) == 0, "producer_exit", "status %#x", status);
  printf("%d checks, %d failed\n", checks, failures);
  return failures ? 1 : 0;
}
