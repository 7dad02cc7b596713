#!/usr/bin/env python3
"""man_pages_test: tests/check-man passes on the tree, and fails on copies of
docs/man/ and tether.h broken the ways the pages can go wrong: a function
added to the header without a page, a page groff warns about, a link page
to no page, a page missing from tether(3)'s list. (A check that cannot fail
proves nothing.)"""
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHECK = os.path.join(ROOT, "tests", "check-man")
MAN = os.path.join(ROOT, "docs", "man")
HEADER = os.path.join(ROOT, "client", "include", "tether", "tether.h")


def run(*args):
    r = subprocess.run([sys.executable, CHECK, *args], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    return r.returncode, r.stdout


class CheckManTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="man_pages_test.")
        self.man = os.path.join(self.tmp, "man")
        shutil.copytree(MAN, self.man)
        self.header = os.path.join(self.tmp, "tether.h")
        shutil.copy(HEADER, self.header)

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def check_copy(self):
        return run("--man-dir", self.man, "--header", self.header)

    def edit(self, path, old, new):
        with open(path) as f:
            text = f.read()
        self.assertIn(old, text)
        with open(path, "w") as f:
            f.write(text.replace(old, new, 1))

    def test_tree_passes(self):
        rc, out = run()
        self.assertEqual(rc, 0, out)
        self.assertIn("all good", out)

    def test_copy_passes(self):
        rc, out = self.check_copy()
        self.assertEqual(rc, 0, out)

    def test_function_without_page_fails(self):
        self.edit(self.header, "const char* tether_strerror(void);",
                  "const char* tether_strerror(void);\nint tether_frobnicate(int x);")
        rc, out = self.check_copy()
        self.assertEqual(rc, 1, out)
        self.assertIn("tether_frobnicate: declared in tether.h but has no page", out)

    def test_groff_warning_fails(self):
        # An undefined macro: groff -ww warns, and the page would lose text.
        self.edit(os.path.join(self.man, "tether_sync.3"), ".SH ERRORS\n", ".SH ERRORS\n.XY oops\n")
        rc, out = self.check_copy()
        self.assertEqual(rc, 1, out)
        self.assertIn("tether_sync.3: groff -man -ww -z", out)

    def test_dangling_link_page_fails(self):
        os.remove(os.path.join(self.man, "tether_invalidate_begin.3"))
        rc, out = self.check_copy()
        self.assertEqual(rc, 1, out)
        self.assertIn("tether_invalidate_end.3: links to man3/tether_invalidate_begin.3", out)

    def test_page_missing_from_overview_fails(self):
        # Its SEE ALSO entry is the overview's one link to the page.
        self.edit(os.path.join(self.man, "tether.3"), ".BR tether_lookup (3),\n", "tether_lookup,\n")
        rc, out = self.check_copy()
        self.assertEqual(rc, 1, out)
        self.assertIn("tether.3: does not list tether_lookup", out)


if __name__ == "__main__":
    unittest.main()
