/*
 * xpmem_validation — XPMEM's argument validation and errno values, checked
 * through <xpmem.h> alone (no tether headers). Needs a reachable tetherd
 * ($TETHER_SOCKET), nothing else: it forks a producer child (before either
 * process touches the library) that exports a segment, since XPMEM does not
 * let a process get its own segments.
 *
 * Prints "ok NAME" or "FAIL NAME: ..." per check and "N checks, M failed";
 * exits 0 only if every check passed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
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
  expect_rc("get_own_segment", xpmem_get(own, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL), EINVAL);
  expect_rc("get_unknown_segid", xpmem_get(12345, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL), ENOENT);
  expect_rc("get_unknown_segid_large",
            xpmem_get(((xpmem_segid_t)1 << 62) | 7, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL), ENOENT);
  xpmem_apid_t ap_rw = xpmem_get(peer, XPMEM_RDWR, XPMEM_PERMIT_MODE, NULL);
  expect_rc("get_rdwr", ap_rw, 0);
  xpmem_apid_t ap_ro = xpmem_get(peer, XPMEM_RDONLY, XPMEM_PERMIT_MODE, NULL);
  expect_rc("get_rdonly", ap_ro, 0);
  xpmem_apid_t ap_0 = xpmem_get(peer, 0, XPMEM_PERMIT_MODE, (void*)0600);
  expect_rc("get_flags_0_and_permit_value_ignored", ap_0, 0);

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
