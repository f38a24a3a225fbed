# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# The free-threading directive is left at Cython's default (not compatible): on a
# free-threaded CPython this module then asks for the GIL back when it is imported. The
# packer below relies on the GIL (see Packer), so it must not be declared GIL-free.
"""The compiled packer: the common record in one C pass, anything unusual left to Python.

``Packer.entry(record, time_ns)`` returns the bytes of a whole ``[EventTime, record]``
entry, and ``Packer.body(record)`` those of the record alone, exactly as
``msgpack.Packer(use_bin_type=True, strict_types=True)`` packs them (tuples as arrays).
Both return None, "not mine", the moment they meet anything else, and the Python packer
(fluentclient.framing.EntryPacker with its RecordGuard) then packs that record as if this
module did not exist. "The common record" is what every guard option leaves unchanged:

* an exact dict, every map in it with exact str keys;
* values of exact types only: str, int from -2**63 to 2**64-1, finite float, bool, None,
  bytes that are UTF-8, and dicts, lists and tuples of these;
* no str holding a lone surrogate (UTF-8 cannot encode it);
* nested at most ``max_depth`` levels (the record is level 1, each dict, list or tuple
  inside adds one).

Why no copy of the record is needed (the Python path packs ``record.copy()``): the whole
pass holds the GIL and runs no Python code. It raises no exception, and allocates no
object the garbage collector tracks (only its own buffer and the final bytes), so no
collection can run a finaliser half-way; no other thread can run before it returns. The
record is read as it is at one moment, which is what the copy buys the Python path.
"""

cimport cython
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy
from libc.math cimport isfinite
from cpython.ref cimport PyObject


cdef extern from "Python.h":
    int PY_VERSION_HEX
    bint PyUnicode_CheckExact(object o)
    bint PyLong_CheckExact(object o)
    bint PyFloat_CheckExact(object o)
    bint PyBytes_CheckExact(object o)
    bint PyDict_CheckExact(object o)
    bint PyList_CheckExact(object o)
    bint PyTuple_CheckExact(object o)
    double PyFloat_AS_DOUBLE(object o)
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow)
    unsigned long long PyLong_AsUnsignedLongLong(object o)
    char* PyBytes_AS_STRING(object o)
    Py_ssize_t PyBytes_GET_SIZE(object o)
    Py_ssize_t PyDict_GET_SIZE(object o)
    int PyDict_Next(object d, Py_ssize_t* pos, PyObject** key, PyObject** value)
    Py_ssize_t PyList_GET_SIZE(object o)
    PyObject* PyList_GET_ITEM(object o, Py_ssize_t i)
    Py_ssize_t PyTuple_GET_SIZE(object o)
    PyObject* PyTuple_GET_ITEM(object o, Py_ssize_t i)
    int PyUnicode_IS_ASCII(object o)
    int PyUnicode_KIND(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    const char* PyUnicode_AsUTF8AndSize(object o, Py_ssize_t* size)
    object PyBytes_FromStringAndSize(const char* data, Py_ssize_t size)
    void* PyMem_Malloc(size_t n)
    void* PyMem_Realloc(void* p, size_t n)
    void PyMem_Free(void* p)
    void PyErr_Clear()
    int PyObject_RichCompareBool(object a, object b, int op)
    enum: Py_LE


cdef extern from *:
    """
    /* Before 3.12 a str made by the legacy C API may not be "ready": its kind and data
       are not set yet. Such a str (rare) is left to Python. */
    #if PY_VERSION_HEX < 0x030C0000
    #define FC_STR_READY(s) PyUnicode_IS_READY(s)
    #else
    #define FC_STR_READY(s) 1
    #endif
    """
    bint FC_STR_READY(object s)


cdef extern from *:
    """
    /* Forks seen by this process: bumped in the child by libc's at-fork handler, which
       runs for every fork() through libc (os.fork, multiprocessing, a C extension's or
       uWSGI's fork), before the child runs any Python. A raw clone() escapes it. Windows
       has no fork. */
    #ifdef _WIN32
    static unsigned long fc_forks = 0;
    static int fc_watch_forks(void) { return 0; }
    #else
    #include <pthread.h>
    static volatile unsigned long fc_forks = 0;
    static int fc_watching = 0;
    static void fc_forked_child(void) { fc_forks++; }
    static int fc_watch_forks(void) {
        /* Once per process, even if the module is initialised again. */
        if (fc_watching) return 0;
        fc_watching = 1;
        return pthread_atfork(NULL, NULL, fc_forked_child);
    }
    #endif

    /* Where a __slots__ attribute lives in its instance, from its member descriptor, or
       -1 if the descriptor is not one such slot can be read through directly (an object
       slot that may be written). */
    #include "structmember.h"
    static Py_ssize_t fc_slot_offset(PyObject* descr) {
        PyMemberDef* m = ((PyMemberDescrObject*)descr)->d_member;
        if (m == NULL || m->type != T_OBJECT_EX || (m->flags & READONLY)) return -1;
        return m->offset;
    }
    /* The object in the slot at ``at`` (borrowed), NULL while the slot is unset. */
    #define FC_SLOT(obj, at) (*(PyObject**)((char*)(obj) + (at)))

    /* A member descriptor's setter (a __slots__ attribute), called directly: what
       setattr() ends in, without looking the name up. */
    static int fc_set_slot(PyObject* descr, PyObject* obj, PyObject* value) {
        return Py_TYPE(descr)->tp_descr_set(descr, obj, value);
    }
    /* A new instance the garbage collector does not track. Only for a Message: it is
       freed by reference counting alone, since the client never builds a cycle through
       it. Tracked, each queued Message and its record that outlived two young
       collections in a burst was promoted to the old generation, and the promotions
       triggered full collections of the whole heap: pauses of 5 to 10 ms in post(). */
    static PyObject* fc_alloc_untracked(PyObject* type) {
        PyObject* obj = ((PyTypeObject*)type)->tp_alloc((PyTypeObject*)type, 0);
        if (obj != NULL) PyObject_GC_UnTrack(obj);
        return obj;
    }
    """
    unsigned long fc_forks
    int fc_watch_forks() except -1
    Py_ssize_t fc_slot_offset(object descr)
    PyObject* FC_SLOT(object obj, Py_ssize_t at)
    int fc_set_slot(object descr, object obj, object value) except -1
    object fc_alloc_untracked(object type)


if fc_watch_forks() != 0:
    raise OSError("pthread_atfork failed")


def forks():
    """How many forks led to this process (0 in the first one): the count post() checks."""
    return fc_forks


from types import MemberDescriptorType as _MemberDescriptor

# The interpreter this module was compiled for, checked against the running one at start.
BUILT_FOR = PY_VERSION_HEX

# What a pass returns: packed, or not mine (the Python packer takes the record).
cdef enum:
    PACKED = 0
    NOT_MINE = 1

# msgpack's limit on a length (ValueError beyond it): such a record is Python's to refuse.
cdef unsigned long long _ITEM_LIMIT = 0xFFFFFFFF
# The buffer a packer keeps between records, and the most it keeps after a large one.
cdef Py_ssize_t _START = 1024
cdef Py_ssize_t _KEEP = 64 * 1024
# Without a guard nothing limits depth in Python but msgpack (and the C stack here): this
# is the guard's own highest max_depth. Deeper records go to Python.
DEPTH_WITHOUT_GUARD = 200
cdef long long _NS = 1000000000
cdef object _U64_MAX = 0xFFFFFFFFFFFFFFFF


cdef Py_ssize_t _slot_at(object cls, str name) except -2:
    """Where ``cls``'s __slots__ attribute ``name`` lives in an instance, or -1."""
    descr = cls.__dict__.get(name)
    if type(descr) is not _MemberDescriptor:
        return -1
    return fc_slot_offset(descr)


cdef inline object _slot(object msg, Py_ssize_t at, str name):
    """The slot's value; an unset slot raises as reading it by name does."""
    cdef PyObject* value = FC_SLOT(msg, at)
    if value == NULL:
        return getattr(msg, name)
    return <object>value


cdef int _close_run(object run, object data, Py_ssize_t largest, bint waiters,
                    bint deliveries) except -1:
    run.data = data
    run.largest = largest
    run.waiters = waiters
    run.deliveries = deliveries
    return 0


def take(queue, Py_ssize_t size, marker):
    """Up to ``size`` items from the left of the deque ``queue``, in one pass that keeps
    the GIL, and whether ``marker`` was among them (it is left out of the list)."""
    cdef list taken = []
    cdef bint seen = False
    cdef Py_ssize_t n = min(len(queue), size)
    popleft = queue.popleft
    try:
        for _ in range(n):
            item = popleft()
            if item is marker:
                seen = True
            else:
                taken.append(item)
    except IndexError:  # emptied meanwhile (every pop holds one lock, so never)
        pass
    return taken, seen


@cython.final
cdef class Packer:
    """Packs common records into a buffer it keeps. One per EntryPacker, like its packer.

    Every pass holds the GIL from start to end, so two threads sharing one (which the
    client never does) could not interleave inside the buffer either.
    """

    cdef char* buf
    cdef Py_ssize_t length
    cdef Py_ssize_t cap
    cdef readonly int max_depth
    # The message class whose slots runs() reads directly (None: by name), and where.
    cdef object message
    cdef Py_ssize_t at_tag, at_record, at_time, at_waiter, at_delivery

    def __cinit__(self, int max_depth, message=None):
        if max_depth < 1 or max_depth > DEPTH_WITHOUT_GUARD:
            raise ValueError(f"max_depth must be from 1 to {DEPTH_WITHOUT_GUARD}")
        self.max_depth = max_depth
        self.buf = <char*>PyMem_Malloc(_START)
        if self.buf == NULL:
            raise MemoryError()
        self.cap = _START
        self.length = 0
        self.message = None
        if message is not None:
            at = [_slot_at(message, name)
                  for name in ("tag", "record", "time_ns", "waiter", "delivery")]
            if min(at) >= 0:
                self.at_tag, self.at_record, self.at_time, self.at_waiter, \
                    self.at_delivery = at
                self.message = message

    def __dealloc__(self):
        PyMem_Free(self.buf)

    def body(self, record):
        """The record packed, or None if it is not a common record."""
        if not PyDict_CheckExact(record):
            return None
        self.length = 0
        if self._map(record, 1) != PACKED:
            return self._drop()
        return self._take()

    def entry(self, record, time_ns):
        """``[EventTime(time_ns), record]`` packed, or None (the time too must be common:
        an exact int whose seconds fit the EventTime's uint32)."""
        cdef int overflow = 0
        cdef long long t
        cdef uint32_t sec, nsec
        if not PyDict_CheckExact(record) or not PyLong_CheckExact(time_ns):
            return None
        t = PyLong_AsLongLongAndOverflow(time_ns, &overflow)
        if overflow != 0 or t < 0 or t // _NS > 0xFFFFFFFF:
            return None
        sec = <uint32_t>(t // _NS)
        nsec = <uint32_t>(t % _NS)
        self.length = 0
        if self._reserve(11) != PACKED:
            return self._drop()
        # fixarray(2), then fixext8 of type 0: seconds and nanoseconds, uint32 big-endian.
        self.buf[0] = <char>0x92
        self.buf[1] = <char>0xD7
        self.buf[2] = 0
        _put32(self.buf + 3, sec)
        _put32(self.buf + 7, nsec)
        self.length = 11
        if self._map(record, 1) != PACKED:
            return self._drop()
        return self._take()

    def runs(self, messages, slow, run_type):
        """The reader's batch packed into runs of one tag: ``EntryPacker.pack_runs``.

        Each common record is packed straight into one buffer for the whole batch, and
        each run's bytes are cut from it once: no bytes object per entry, no join. Any
        other record is ``slow(msg)``'s: the Python packer's entry, or None when that
        record failed (``slow`` reports it), which then leaves no trace in its run, as
        in Python. ``run_type`` is framing.PackedRun; the runs come back sealed, with
        their ``largest`` entry and whether any message has a waiter or a delivery.

        A message of the class given at construction is read through its slots' places,
        without a look-up by name: the reader's batch scans cost more than packing.
        """
        cdef list runs = []
        cdef list sizes = None
        cdef list kept = None
        cdef object run = None
        cdef object tag = None
        cdef object msg_tag, entry, record, time_ns, waiter, delivery
        cdef Py_ssize_t start = 0, before, n, size, largest = 0
        cdef bint direct, waiters = False, deliveries = False
        self.length = 0
        try:
            for msg in messages:
                direct = type(msg) is self.message
                if direct:
                    record = _slot(msg, self.at_record, "record")
                    time_ns = _slot(msg, self.at_time, "time_ns")
                else:
                    record = msg.record
                    time_ns = msg.time_ns
                before = self.length
                if self._entry_at(record, time_ns) != PACKED:
                    self.length = before
                    entry = slow(msg)
                    if entry is None:
                        continue
                    n = PyBytes_GET_SIZE(entry)
                    if self._reserve(n) != PACKED:
                        raise MemoryError()
                    memcpy(self.buf + self.length, PyBytes_AS_STRING(entry), n)
                    self.length += n
                if direct:
                    msg_tag = _slot(msg, self.at_tag, "tag")
                    waiter = _slot(msg, self.at_waiter, "waiter")
                    delivery = _slot(msg, self.at_delivery, "delivery")
                else:
                    msg_tag = msg.tag
                    waiter = msg.waiter
                    delivery = msg.delivery
                if run is None or (msg_tag is not tag and msg_tag != tag):
                    if run is not None:
                        _close_run(run, PyBytes_FromStringAndSize(self.buf + start,
                                                                  before - start),
                                   largest, waiters, deliveries)
                    start = before
                    tag = msg_tag
                    run = run_type(tag)
                    sizes = run.sizes
                    kept = run.messages
                    runs.append(run)
                    largest, waiters, deliveries = 0, False, False
                size = self.length - before
                sizes.append(size)
                kept.append(msg)
                if size > largest:
                    largest = size
                if waiter is not None:
                    waiters = True
                if delivery is not None:
                    deliveries = True
            if run is not None:
                _close_run(run, PyBytes_FromStringAndSize(self.buf + start,
                                                          self.length - start),
                           largest, waiters, deliveries)
        finally:
            self._drop()
        return runs

    cdef int _entry_at(self, object record, object time_ns) noexcept:
        """``entry()``'s pass, written at the end of the buffer; NOT_MINE leaves the
        buffer's length for the caller to restore."""
        cdef int overflow = 0
        cdef long long t
        cdef char* at
        if not PyDict_CheckExact(record) or not PyLong_CheckExact(time_ns):
            return NOT_MINE
        t = PyLong_AsLongLongAndOverflow(time_ns, &overflow)
        if overflow != 0 or t < 0 or t // _NS > 0xFFFFFFFF:
            return NOT_MINE
        if self._reserve(11) != PACKED:
            return NOT_MINE
        at = self.buf + self.length
        at[0] = <char>0x92
        at[1] = <char>0xD7
        at[2] = 0
        _put32(at + 3, <uint32_t>(t // _NS))
        _put32(at + 7, <uint32_t>(t % _NS))
        self.length += 11
        return self._map(record, 1)

    # -- the buffer ----------------------------------------------------------------------

    cdef object _take(self):
        out = PyBytes_FromStringAndSize(self.buf, self.length)
        self._drop()
        return out

    cdef object _drop(self):
        """Forget the pass; a buffer grown by a large record is given back."""
        cdef char* small
        self.length = 0
        if self.cap > _KEEP:
            small = <char*>PyMem_Realloc(self.buf, _START)
            if small != NULL:
                self.buf = small
                self.cap = _START
        return None

    cdef inline int _reserve(self, Py_ssize_t more) noexcept:
        cdef Py_ssize_t want = self.length + more
        cdef Py_ssize_t cap = self.cap
        cdef char* grown
        if want <= cap:
            return PACKED
        while cap < want:
            cap *= 2
        grown = <char*>PyMem_Realloc(self.buf, cap)
        if grown == NULL:
            # No exception is left set: the Python packer meets the shortage itself.
            return NOT_MINE
        self.buf = grown
        self.cap = cap
        return PACKED

    cdef inline int _byte(self, uint8_t b) noexcept:
        if self._reserve(1) != PACKED:
            return NOT_MINE
        self.buf[self.length] = <char>b
        self.length += 1
        return PACKED

    cdef inline int _head(self, Py_ssize_t n, uint8_t fix, Py_ssize_t fix_limit,
                          uint8_t b8, uint8_t b16, uint8_t b32) noexcept:
        """A length header the way msgpack writes it: the smallest form that holds ``n``
        (``b8`` 0 where the family has no 8-bit form)."""
        cdef char* at
        if <unsigned long long>n > _ITEM_LIMIT or self._reserve(5) != PACKED:
            return NOT_MINE
        at = self.buf + self.length
        if n < fix_limit:
            at[0] = <char>(fix | n)
            self.length += 1
        elif b8 != 0 and n < 0x100:
            at[0] = <char>b8
            at[1] = <char>n
            self.length += 2
        elif n < 0x10000:
            at[0] = <char>b16
            at[1] = <char>(n >> 8)
            at[2] = <char>n
            self.length += 3
        else:
            at[0] = <char>b32
            _put32(at + 1, <uint32_t>n)
            self.length += 5
        return PACKED

    cdef inline int _raw(self, const char* data, Py_ssize_t n) noexcept:
        if self._reserve(n) != PACKED:
            return NOT_MINE
        memcpy(self.buf + self.length, data, n)
        self.length += n
        return PACKED

    # -- the values ----------------------------------------------------------------------

    cdef int _map(self, object obj, int depth) noexcept:
        cdef Py_ssize_t pos = 0
        cdef PyObject* key
        cdef PyObject* value
        if depth > self.max_depth:
            return NOT_MINE
        if self._head(PyDict_GET_SIZE(obj), 0x80, 16, 0, 0xDE, 0xDF) != PACKED:
            return NOT_MINE
        # No Python code runs below, so the dict cannot change size or order meanwhile.
        while PyDict_Next(obj, &pos, &key, &value):
            if not PyUnicode_CheckExact(<object>key):
                return NOT_MINE
            if self._str(<object>key) != PACKED:
                return NOT_MINE
            if self._value(<object>value, depth) != PACKED:
                return NOT_MINE
        return PACKED

    cdef int _array(self, object obj, int depth, bint is_list) noexcept:
        cdef Py_ssize_t i, n
        if depth > self.max_depth:
            return NOT_MINE
        n = PyList_GET_SIZE(obj) if is_list else PyTuple_GET_SIZE(obj)
        if self._head(n, 0x90, 16, 0, 0xDC, 0xDD) != PACKED:
            return NOT_MINE
        for i in range(n):
            if is_list:
                item = <object>PyList_GET_ITEM(obj, i)
            else:
                item = <object>PyTuple_GET_ITEM(obj, i)
            if self._value(item, depth) != PACKED:
                return NOT_MINE
        return PACKED

    cdef int _value(self, object obj, int depth) noexcept:
        """``obj`` found at level ``depth``: a container in it is one level deeper."""
        cdef double d
        cdef uint64_t bits
        if PyUnicode_CheckExact(obj):
            return self._str(obj)
        if PyLong_CheckExact(obj):  # bool is not an exact int
            return self._int(obj)
        if PyFloat_CheckExact(obj):
            d = PyFloat_AS_DOUBLE(obj)
            if not isfinite(d):
                return NOT_MINE
            if self._reserve(9) != PACKED:
                return NOT_MINE
            memcpy(&bits, &d, 8)
            self.buf[self.length] = <char>0xCB
            _put64(self.buf + self.length + 1, bits)
            self.length += 9
            return PACKED
        if obj is None:
            return self._byte(0xC0)
        if obj is True:
            return self._byte(0xC3)
        if obj is False:
            return self._byte(0xC2)
        if PyDict_CheckExact(obj):
            return self._map(obj, depth + 1)
        if PyList_CheckExact(obj):
            return self._array(obj, depth + 1, True)
        if PyTuple_CheckExact(obj):
            return self._array(obj, depth + 1, False)
        if PyBytes_CheckExact(obj):
            return self._bytes(obj)
        return NOT_MINE

    cdef int _str(self, object s) noexcept:
        cdef Py_ssize_t n
        cdef const char* data
        if not FC_STR_READY(s):
            return NOT_MINE
        if not PyUnicode_IS_ASCII(s) and _has_surrogate(s):
            return NOT_MINE
        # Cannot fail now but for memory (no exception is created for a surrogate).
        data = PyUnicode_AsUTF8AndSize(s, &n)
        if data == NULL:
            PyErr_Clear()
            return NOT_MINE
        if self._head(n, 0xA0, 32, 0xD9, 0xDA, 0xDB) != PACKED:
            return NOT_MINE
        return self._raw(data, n)

    cdef int _bytes(self, object b) noexcept:
        cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
        cdef const char* data = PyBytes_AS_STRING(b)
        if not _is_utf8(<const uint8_t*>data, n):
            return NOT_MINE
        if self._head(n, 0, 0, 0xC4, 0xC5, 0xC6) != PACKED:
            return NOT_MINE
        return self._raw(data, n)

    cdef int _int(self, object obj) noexcept:
        cdef int overflow = 0
        cdef long long v = PyLong_AsLongLongAndOverflow(obj, &overflow)
        cdef unsigned long long u
        cdef char* at
        if overflow < 0:
            return NOT_MINE
        if overflow > 0:
            # Above 2**64-1 msgpack refuses it, and Python says why. Compared first, so
            # that no OverflowError is ever created here (see the module's docstring).
            if PyObject_RichCompareBool(obj, _U64_MAX, Py_LE) != 1:
                PyErr_Clear()
                return NOT_MINE
            u = PyLong_AsUnsignedLongLong(obj)
            if self._reserve(9) != PACKED:
                return NOT_MINE
            self.buf[self.length] = <char>0xCF
            _put64(self.buf + self.length + 1, u)
            self.length += 9
            return PACKED
        if self._reserve(9) != PACKED:
            return NOT_MINE
        at = self.buf + self.length
        # msgpack's choice of form: unsigned forms for positive values, the smallest that
        # holds the value.
        if v < -32:
            if v < -32768:
                if v < -2147483648:
                    at[0] = <char>0xD3
                    _put64(at + 1, <uint64_t>v)
                    self.length += 9
                else:
                    at[0] = <char>0xD2
                    _put32(at + 1, <uint32_t>v)
                    self.length += 5
            elif v < -128:
                at[0] = <char>0xD1
                at[1] = <char>(v >> 8)
                at[2] = <char>v
                self.length += 3
            else:
                at[0] = <char>0xD0
                at[1] = <char>v
                self.length += 2
        elif v < 128:
            at[0] = <char>v
            self.length += 1
        elif v < 0x100:
            at[0] = <char>0xCC
            at[1] = <char>v
            self.length += 2
        elif v < 0x10000:
            at[0] = <char>0xCD
            at[1] = <char>(v >> 8)
            at[2] = <char>v
            self.length += 3
        elif v < 0x100000000:
            at[0] = <char>0xCE
            _put32(at + 1, <uint32_t>v)
            self.length += 5
        else:
            at[0] = <char>0xCF
            _put64(at + 1, <uint64_t>v)
            self.length += 9
        return PACKED


cdef inline void _put32(char* at, uint32_t v) noexcept:
    at[0] = <char>(v >> 24)
    at[1] = <char>(v >> 16)
    at[2] = <char>(v >> 8)
    at[3] = <char>v


cdef inline void _put64(char* at, uint64_t v) noexcept:
    _put32(at, <uint32_t>(v >> 32))
    _put32(at + 4, <uint32_t>v)


cdef bint _has_surrogate(object s) noexcept:
    """True if ``s`` holds a code point from U+D800 to U+DFFF, which UTF-8 cannot encode."""
    cdef int kind = PyUnicode_KIND(s)
    cdef Py_ssize_t i, n = PyUnicode_GET_LENGTH(s)
    cdef const uint16_t* two
    cdef const uint32_t* four
    if kind == 1:
        return False  # Latin-1 only
    if kind == 2:
        two = <const uint16_t*>PyUnicode_DATA(s)
        for i in range(n):
            if 0xD800 <= two[i] <= 0xDFFF:
                return True
        return False
    four = <const uint32_t*>PyUnicode_DATA(s)
    for i in range(n):
        if 0xD800 <= four[i] <= 0xDFFF:
            return True
    return False


cdef bint _is_utf8(const uint8_t* s, Py_ssize_t n) noexcept:
    """What ``bytes.decode("utf-8")`` accepts: well-formed UTF-8 (no overlong forms, no
    surrogates, nothing above U+10FFFF), checked without creating an exception."""
    cdef Py_ssize_t i = 0
    cdef uint8_t c, lo, hi
    cdef int more, k
    while i < n:
        c = s[i]
        if c < 0x80:
            i += 1
            continue
        lo, hi = 0x80, 0xBF  # the range of the byte after the lead byte
        if 0xC2 <= c <= 0xDF:
            more = 1
        elif c == 0xE0:
            more, lo = 2, 0xA0
        elif c == 0xED:
            more, hi = 2, 0x9F
        elif 0xE1 <= c <= 0xEF:
            more = 2
        elif c == 0xF0:
            more, lo = 3, 0x90
        elif c == 0xF4:
            more, hi = 3, 0x8F
        elif 0xF1 <= c <= 0xF3:
            more = 3
        else:
            return False
        if i + more >= n:
            return False  # cut short
        if not (lo <= s[i + 1] <= hi):
            return False
        for k in range(2, more + 1):
            if not (0x80 <= s[i + k] <= 0xBF):
                return False
        i += more + 1
    return True


# -- post() --------------------------------------------------------------------------------

@cython.final
cdef class Poster:
    """BufferedClient.post()'s usual path in C; anything else goes to its Python.

    The usual case is the one client.py's post() takes without its careful path: a tag
    seen before, a plain dict, no time, no ack or sync_append, room in the queue, the client running, no
    fork since the client's state was made, no thread of the client reporting an error.
    Then it counts the record, queues a Message and wakes the reader if it went idle,
    exactly as the Python does; in every other case it calls the client's
    ``_post_carefully`` with the same arguments, so every error and verdict is the
    Python's own. The fork check reads a counter bumped by libc's at-fork handler
    instead of calling os.getpid() (about a quarter of a Python post()).

    One per client, for its life: ``bind`` points it at the queue, reader and lifecycle of
    the client's state, made afresh after a fork. It holds the client's core (never the
    client), like the client's threads.
    """

    cdef object known
    cdef object careful
    cdef object late
    cdef object queue
    cdef object append
    cdef object life
    cdef object admission
    cdef object reporting
    cdef object reader
    cdef object count
    cdef object clock
    cdef object running
    cdef object message
    cdef object set_tag, set_record, set_time, set_waiter, set_delivery
    cdef unsigned long forks
    cdef object pid
    cdef object getpid

    def __cinit__(self, message, known, careful, late, running, clock, getpid):
        slots = []
        for name in ("tag", "record", "time_ns", "waiter", "delivery"):
            descr = message.__dict__.get(name)
            if type(descr) is not _MemberDescriptor:
                raise TypeError(f"{message.__name__}.{name} is not a __slots__ attribute")
            slots.append(descr)
        self.set_tag, self.set_record, self.set_time, self.set_waiter, self.set_delivery = slots
        self.message = message
        self.known = known
        self.careful = careful
        self.late = late
        self.running = running
        self.clock = clock
        self.getpid = getpid

    def bind(self, queue, life, admission, reporting, reader, count, pid):
        """Post into this state (the client's, as made at start and after a fork)."""
        self.queue = queue
        self.append = queue.append
        self.life = life
        self.admission = admission
        self.reporting = reporting
        self.reader = reader
        self.count = count
        self.pid = pid
        self.forks = fc_forks

    def post(self, tag, record, *, time=None, sync_append=False, timeout=None, ack=False):
        """BufferedClient.post(): see its documentation."""
        cdef object full_tag
        try:
            full_tag = self.known.get(tag)
        except TypeError:  # unhashable, so no tag: the careful path says so
            full_tag = None
        if (
            full_tag is None or type(record) is not dict
            or time is not None or ack or sync_append
            or len(self.queue) >= self.admission.room
            or self.life.phase is not self.running
            or not self._same_process() or self.reporting.busy
        ):
            return self.careful(tag, record, time, sync_append, timeout, ack)
        self.count()
        msg = fc_alloc_untracked(self.message)
        fc_set_slot(self.set_tag, msg, full_tag)
        fc_set_slot(self.set_record, msg, record)
        fc_set_slot(self.set_time, msg, self.clock())
        fc_set_slot(self.set_waiter, msg, None)
        fc_set_slot(self.set_delivery, msg, None)
        self.append(msg)
        if self.life.phase is not self.running:
            # A shutdown began since the look above: the record may have missed its sweep.
            return self.late(msg, False)
        reader = self.reader
        if reader.idle:
            reader.wake.set()
        return True

    cdef bint _same_process(self) except -1:
        """No fork since bind(), or one whose child is still the bound process."""
        if self.forks == fc_forks:
            return True
        # Forked since bind(): the careful path starts the child afresh, which binds
        # again. The same pid as bound (a reused one) is what the Python path's check
        # passes too, so it passes here.
        if self.getpid() != self.pid:
            return False
        self.forks = fc_forks
        return True
