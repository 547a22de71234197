# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False, cdivision=True
"""Compiled decoding of row changes: the reader's innermost loops, once per change and per column.

``tuple_at`` is :func:`actors.pgoutput._py_tuple` and ``row_at`` is
:meth:`actors.pgoutput.PgOutputDecoder._py_row_at`, compiled; the Python ones stay as the
fallback where this extension is not built (no C compiler at install).  Same rows, same
positions, same errors: ``tests/unit/test_pgoutput.py`` runs every case through both, and
``test_pgtuple_congruence.py`` compares them on random, cut short and corrupted input.

Why compiled: in Python a row costs about 0.5 us of message handling plus 0.4 us per column
(interpreter dispatch, a slice and a struct call per length); here a column is a length read
from the buffer and one ``str`` built straight from it.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.dict cimport PyDict_SetItem
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE
from cpython.long cimport PyLong_FromLongLong
from cpython.ref cimport PyObject
from cpython.tuple cimport PyTuple_GET_ITEM
from cpython.unicode cimport PyUnicode_DecodeUTF8

# set once by actors.pgoutput (bind): its error class and its unchanged-TOAST marker
cdef object _ProtocolError = ValueError
cdef object _UNCHANGED = None


def bind(protocol_error, unchanged_toast):
    """Use actors.pgoutput's ProtocolError and UNCHANGED_TOAST (it imports this module, so
    this module cannot import it)."""
    global _ProtocolError, _UNCHANGED
    _ProtocolError = protocol_error
    _UNCHANGED = unchanged_toast


cdef inline Py_ssize_t _u32(const unsigned char* p) noexcept:
    return (<Py_ssize_t>p[0] << 24) | (<Py_ssize_t>p[1] << 16) | (<Py_ssize_t>p[2] << 8) | <Py_ssize_t>p[3]


cdef object _int_of(const unsigned char* p, Py_ssize_t size):
    """``int(bytes)`` for PostgreSQL's integer text form (``-?[0-9]+``) without a bytes object;
    anything else (very long, or any other character) goes through ``int()`` itself, so the
    result and the error are exactly Python's."""
    cdef Py_ssize_t i = 0
    cdef bint negative = False
    cdef long long value = 0
    cdef unsigned char c
    if 0 < size <= 18:
        if p[0] == 45:  # '-'
            negative = True
            i = 1
        if i < size:
            while i < size:
                c = p[i]
                if c < 48 or c > 57:
                    break
                value = value * 10 + (c - 48)
                i += 1
            else:
                return PyLong_FromLongLong(-value if negative else value)
    return int(PyBytes_FromStringAndSize(<const char*>p, size))


def tuple_at(bytes buf, Py_ssize_t pos, rel, list plan):
    """TupleData at ``buf[pos]``: (column name -> value, position after it, any column unchanged TOAST).

    ``plan`` is the relation's ``[(column name, converter or None)]`` (``None``: text;
    ``int``: an integer type; else a callable taking the text).
    """
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(buf)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(buf)
    cdef Py_ssize_t n, ncols, i, start, size
    cdef unsigned char kind
    cdef bint toasted = False
    cdef dict row = {}
    cdef object name, conv, value
    cdef PyObject* item
    if pos < 0 or pos + 2 > end:
        raise _ProtocolError("message truncated")
    n = <short>((p[pos] << 8) | p[pos + 1])
    pos += 2
    ncols = PyList_GET_SIZE(plan)
    if n != ncols:
        if n > ncols or n < 0:
            raise _ProtocolError(f"tuple has {n} columns, relation {rel.qualified_name} has {ncols}")
        ncols = n
    for i in range(ncols):
        item = PyList_GET_ITEM(plan, i)
        name = <object>PyTuple_GET_ITEM(<object>item, 0)
        conv = <object>PyTuple_GET_ITEM(<object>item, 1)
        if pos >= end:
            raise _ProtocolError("message truncated")
        kind = p[pos]
        if kind == 116 or kind == 98:  # 't': text, 'b': binary (never asked for); length-prefixed
            if pos + 5 > end:
                raise _ProtocolError("message truncated")
            size = _u32(p + pos + 1)
            start = pos + 5
            if size > end - start:
                raise _ProtocolError("message truncated")
            pos = start + size
            if kind == 98:
                value = PyBytes_FromStringAndSize(<const char*>p + start, size)
            elif conv is None:
                value = PyUnicode_DecodeUTF8(<const char*>p + start, size, NULL)
            elif conv is int:
                value = _int_of(p + start, size)
            else:
                value = conv(PyUnicode_DecodeUTF8(<const char*>p + start, size, NULL))
        elif kind == 110:  # 'n': NULL
            value = None
            pos += 1
        elif kind == 117:  # 'u': unchanged TOAST, not resent
            value = _UNCHANGED
            toasted = True
            pos += 1
        else:
            raise _ProtocolError(f"unknown tuple column kind {chr(kind)!r}")
        PyDict_SetItem(row, name, value)
    return row, pos, toasted


def row_at(self, bytes buf, Py_ssize_t pos):
    """:meth:`actors.pgoutput.PgOutputDecoder.row_at`, compiled (bound to the class in its place).

    The same steps in the same order, so the same message fails the same way: relation id,
    the decoder's cached plan for it (rebuilt by the decoder's own ``_plan`` when a new
    Relation message replaced it), marker, then the tuples.
    """
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(buf)
    cdef Py_ssize_t end = PyBytes_GET_SIZE(buf)
    cdef unsigned char tag, marker
    if pos < 0 or pos + 5 > end:
        raise _ProtocolError("message truncated")
    tag = p[pos]
    relid = _u32(p + pos + 1)
    entry = self._plans.get(relid)
    if entry is None or (<tuple>entry)[0] is not self.relations.get(relid):
        entry = self._plan(relid)
    rel = (<tuple>entry)[0]
    plan = (<tuple>entry)[1]
    if pos + 6 > end:
        raise _ProtocolError("message truncated")
    marker = p[pos + 5]
    pos += 6
    if tag == 73:  # 'I'
        if marker != 78:  # 'N'
            raise _ProtocolError("insert without new tuple")
        new, _, toasted = tuple_at(buf, pos, rel, plan)
        return "I", rel, new, None, toasted
    if tag == 85:  # 'U'
        old = None
        if marker == 75 or marker == 79:  # 'K', 'O'
            old, pos, _ = tuple_at(buf, pos, rel, plan)
            if pos >= end:
                raise _ProtocolError("message truncated")
            marker = p[pos]
            pos += 1
        if marker != 78:
            raise _ProtocolError("update without new tuple")
        new, _, toasted = tuple_at(buf, pos, rel, plan)
        return "U", rel, new, old, toasted
    if tag == 68:  # 'D'
        if marker != 75 and marker != 79:
            raise _ProtocolError("delete without old tuple")
        old, _, _ = tuple_at(buf, pos, rel, plan)
        return "D", rel, None, old, False
    raise _ProtocolError(f"not a row change: {chr(tag)!r}")
