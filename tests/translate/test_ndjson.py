"""
Tests for L{qwen_twist.translate.ndjson}: cutting an upstream body into
NDJSON lines whatever the read boundaries (reference section 2.1, E21).
"""

from __future__ import annotations

from typing import List

from hypothesis import given, settings, strategies as st
from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.translate.ndjson import MIN_LINE_LIMIT, LineTooLong, NdjsonSplitter


def feed_all(splitter: NdjsonSplitter, pieces: List[bytes]) -> List[bytes]:
    lines: List[bytes] = []
    for piece in pieces:
        lines.extend(splitter.feed(piece))
    return lines


class SplittingTests(SynchronousTestCase):
    """
    Lines come out whole and in order however the body was chunked.
    """

    def test_one_line(self):
        """
        A read holding one complete line gives that line without its newline.
        """
        self.assertEqual(NdjsonSplitter().feed(b'{"a":1}\n'), [b'{"a":1}'])

    def test_many_lines_per_read(self):
        """
        A read holding several lines gives all of them, in order.
        """
        self.assertEqual(
            NdjsonSplitter().feed(b"one\ntwo\nthree\n"), [b"one", b"two", b"three"]
        )

    def test_line_across_reads(self):
        """
        A line spread over several reads comes out once, when its newline
        arrives; the partial pieces produce nothing.
        """
        splitter = NdjsonSplitter()
        self.assertEqual(splitter.feed(b'{"con'), [])
        self.assertEqual(splitter.feed(b'tent":'), [])
        self.assertEqual(splitter.feed(b'"x"}\n{"n'), [b'{"content":"x"}'])
        self.assertEqual(splitter.feed(b'":2}\n'), [b'{"n":2}'])

    def test_byte_by_byte(self):
        """
        Feeding one byte at a time, including the bytes of a multi-byte
        UTF-8 sequence, yields the same lines as one read.
        """
        body = '{"c":"é😀\u2028"}\n{"d":1}\n'.encode("utf-8")
        splitter = NdjsonSplitter()
        lines = feed_all(splitter, [body[i:i + 1] for i in range(len(body))])
        self.assertEqual(lines, [b'{"c":"\xc3\xa9\xf0\x9f\x98\x80\xe2\x80\xa8"}', b'{"d":1}'])

    def test_crlf(self):
        """
        CRLF line endings are accepted: the CR is not part of the line, even
        when the CR and LF arrive in different reads.
        """
        splitter = NdjsonSplitter()
        self.assertEqual(splitter.feed(b"a\r\nb\r"), [b"a"])
        self.assertEqual(splitter.feed(b"\n"), [b"b"])

    def test_empty_lines_skipped(self):
        """
        Empty and whitespace-only lines are ignored.
        """
        self.assertEqual(
            NdjsonSplitter().feed(b"\n\r\na\n \t\n\nb\n"), [b"a", b"b"]
        )

    def test_empty_read(self):
        """
        An empty read changes nothing.
        """
        splitter = NdjsonSplitter()
        self.assertEqual(splitter.feed(b""), [])
        self.assertEqual(splitter.buffered, 0)
        self.assertIsNone(splitter.flush())

    @given(
        st.lists(
            st.text(
                st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"),
                min_size=1,
            ).filter(lambda s: not s.isspace()),
            max_size=8,
        ),
        st.lists(st.integers(min_value=0, max_value=400), max_size=20),
        st.booleans(),
    )
    @settings(max_examples=300, deadline=None)
    def test_any_chunking(self, texts, cuts, crlf):
        """
        For any lines and any read boundaries, the splitter returns exactly
        the lines that were sent.
        """
        ending = b"\r\n" if crlf else b"\n"
        lines = [t.encode("utf-8") for t in texts]
        body = b"".join(line + ending for line in lines)
        bounds = sorted({c for c in cuts if c < len(body)} | {0, len(body)})
        pieces = [body[a:b] for a, b in zip(bounds, bounds[1:])]
        splitter = NdjsonSplitter()
        self.assertEqual(feed_all(splitter, pieces), lines)
        self.assertIsNone(splitter.flush())


class FlushTests(SynchronousTestCase):
    """
    At the end of the body the splitter hands over a final unterminated line.
    """

    def test_trailing_line(self):
        """
        A last line without a newline is returned by C{flush}, once.
        """
        splitter = NdjsonSplitter()
        self.assertEqual(splitter.feed(b'a\n{"done":'), [b"a"])
        self.assertEqual(splitter.feed(b"true}"), [])
        self.assertEqual(splitter.flush(), b'{"done":true}')
        self.assertIsNone(splitter.flush())
        self.assertEqual(splitter.buffered, 0)

    def test_trailing_cr(self):
        """
        A final line ending in a lone CR is returned without it.
        """
        splitter = NdjsonSplitter()
        splitter.feed(b"x\r")
        self.assertEqual(splitter.flush(), b"x")

    def test_nothing_left(self):
        """
        When the body ended with a newline, or only blanks remain, C{flush}
        returns L{None}.
        """
        splitter = NdjsonSplitter()
        splitter.feed(b"a\n")
        self.assertIsNone(splitter.flush())
        splitter.feed(b"  \r")
        self.assertIsNone(splitter.flush())


class LimitTests(SynchronousTestCase):
    """
    The buffer is bounded: at least 8 MiB lines pass (E21), longer ones fail.
    """

    def test_default_limit_allows_8_mib(self):
        """
        The default limit is above the 8 MiB the reference requires.
        """
        self.assertGreaterEqual(NdjsonSplitter().max_line, MIN_LINE_LIMIT)

    def test_large_line_in_small_reads(self):
        """
        A line of more than 8 MiB read in 64 KiB pieces comes out whole, and
        C{buffered} reports the bytes held meanwhile.
        """
        line = b'{"x":"' + b"a" * (MIN_LINE_LIMIT + 1000) + b'"}'
        body = line + b"\n"
        splitter = NdjsonSplitter()
        size = 64 * 1024
        out: List[bytes] = []
        for start in range(0, len(body), size):
            out.extend(splitter.feed(body[start:start + size]))
            if start + size < len(body):
                self.assertEqual(splitter.buffered, start + size)
        self.assertEqual(len(out), 1)
        self.assertEqual(out[0], line)
        self.assertEqual(splitter.buffered, 0)

    def test_exactly_at_limit(self):
        """
        A line of exactly C{max_line} bytes is accepted.
        """
        self.assertEqual(NdjsonSplitter(max_line=5).feed(b"12345\n"), [b"12345"])

    def test_complete_line_too_long(self):
        """
        A complete line over the limit raises L{LineTooLong}, carrying the
        lines that preceded it in the same read, and the buffer is dropped.
        """
        splitter = NdjsonSplitter(max_line=5)
        e = self.assertRaises(LineTooLong, splitter.feed, b"ok\n123456\nlater\n")
        self.assertEqual(e.lines, [b"ok"])
        self.assertEqual(splitter.buffered, 0)

    def test_single_line_read_too_long(self):
        """
        A read that is exactly one line over the limit (the fast path of a
        streaming read) raises with no earlier lines; one at the limit, with
        CRLF, or blank, is handled as on the general path.
        """
        splitter = NdjsonSplitter(max_line=5)
        e = self.assertRaises(LineTooLong, splitter.feed, b"123456\n")
        self.assertEqual((e.lines, splitter.buffered), ([], 0))
        self.assertEqual(splitter.feed(b"12345\r\n"), [b"12345"])
        self.assertEqual(splitter.feed(b"  \n"), [])
        self.assertEqual(splitter.feed(b"12"), [])
        self.assertEqual(splitter.feed(b"3\n"), [b"123"])

    def test_incomplete_line_too_long(self):
        """
        An incomplete line fails as soon as it is over the limit, without
        waiting for a newline that may never come.
        """
        splitter = NdjsonSplitter(max_line=5)
        self.assertEqual(splitter.feed(b"123"), [])
        e = self.assertRaises(LineTooLong, splitter.feed, b"456")
        self.assertEqual(e.lines, [])
        self.assertEqual(splitter.buffered, 0)

    def test_tail_too_long(self):
        """
        The unterminated tail of a read that also completes lines is checked
        too; the completed lines are carried by the exception.
        """
        splitter = NdjsonSplitter(max_line=5)
        e = self.assertRaises(LineTooLong, splitter.feed, b"a\nb\n123456")
        self.assertEqual(e.lines, [b"a", b"b"])

    def test_oversized_real_limit(self):
        """
        With an 8 MiB limit, an unterminated 8 MiB + 1 line fails cleanly.
        """
        splitter = NdjsonSplitter(max_line=MIN_LINE_LIMIT)
        splitter.feed(b"a" * MIN_LINE_LIMIT)
        self.assertRaises(LineTooLong, splitter.feed, b"a")
        self.assertEqual(splitter.buffered, 0)

    def test_invalid_limit(self):
        """
        A limit below one byte is a programming error.
        """
        self.assertRaises(ValueError, NdjsonSplitter, 0)
