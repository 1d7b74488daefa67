/* The flusher's finalize loop (aegis_mw/core/finalize.py) for compiled inbox
 * items, with the rollup folding (RollupDelta.add in core/rollup.py) fused in.
 *
 * It takes the common case only: an HttpItem whose values are plain and
 * already known clean (an exact str route in the finalizer's clean routes, a
 * printable ASCII client address or none, no forwarded header, a trace
 * context that is none, an exact bytes or ASCII str header or a span, a
 * printable ASCII path and error within their limits, a status and byte
 * counts in [0, 2**30), a standard method, finite times). At the first item
 * it does not take, or whose rollup cell is not the plain shape, it stops and
 * leaves that item to the Python loop, which stays the reference: both give
 * the same records, rollup cells and counters, float for float (the same
 * operations in the same order; the extension is built without contracting
 * a*b+c into one rounding, see setup.py).
 *
 * An existing rollup cell is not changed item by item: the item's sums go
 * to the cell's pending sums (a FoldPending, fold_pending.c), written into
 * the cell when the Finalizer hands its rollups over or the Python loop
 * takes an item; the cell is found by its key remembered there, compared by
 * identity, before its dict is looked up. A new cell is made whole at once.
 *
 * Progress is written to `state`, an array('q') of S_FIELDS numbers, after
 * every item, so that the caller knows where it got to whatever happens. A
 * failure in one item is counted as invalid, as the Python loop counts it,
 * and the loop goes on with the next. */
#include "hotpath.h"
#include <math.h>

enum { S_INDEX, S_SEQUENCE, S_SAMPLED, S_ROLLED, S_INVALID, S_FIELDS };
enum { C_COUNT, C_ERRORS, C_RATE_LIMITED, C_SUM, C_MIN, C_MAX, C_REQUEST, C_RESPONSE,
       C_HISTOGRAM, C_FIELDS };

#define SMALL (1LL << 30)
#define FINEST 5.0
/* Timestamps past this take the Python loop (see bucket_start). */
#define TIMESTAMP_LIMIT 1e15

/* The 5-second bucket of a timestamp, as `int(timestamp // 5) * 5` gives it.
 * Python's floor division of floats is the exact floor of the quotient
 * wherever its steps are exact, which they are below TIMESTAMP_LIMIT; so is
 * floor(t / 5), at a tenth of fmod's cost: for t just below a multiple 5k,
 * the quotient lies at least ulp(t) / 5 below k, while the doubles below k
 * are at most ulp(t) / 4 apart (k is under t / 4), so rounding cannot reach
 * k. The edge test checks the doubles either side of such multiples. */
static long long
bucket_start(double timestamp)
{
    return (long long)floor(timestamp / FINEST) * 5;
}

/* str.isprintable() and len() <= limit, decided for compact ASCII text; -1
 * for other text (the Python loop decides). */
static int
printable_ascii(PyObject *text, Py_ssize_t limit)
{
    if (!PyUnicode_IS_COMPACT_ASCII(text)) {
        return -1;
    }
    Py_ssize_t length = PyUnicode_GET_LENGTH(text);
    if (length > limit) {
        return 0;
    }
    const unsigned char *chars = PyUnicode_1BYTE_DATA(text);
    for (Py_ssize_t i = 0; i < length; i++) {
        if (chars[i] < 0x20 || chars[i] > 0x7e) {
            return 0;
        }
    }
    return 1;
}

/* A native count in [0, SMALL) when the item holds one as a long long. */
static inline int
small_count(PyObject *object, long long value)
{
    return object == NULL && value >= 0 && value < SMALL;
}

typedef struct {
    double duration_ms;
    int failed, limited;
    long long request_bytes, response_bytes;
    long bucket;         /* the histogram bucket of the duration */
} Fold;

/* A new cell: [1, failed, limited, d, d, d, request, response, {bucket: 1}]. */
static PyObject *
new_cell(const Fold *fold)
{
    PyObject *histogram = PyDict_New();
    PyObject *duration = PyFloat_FromDouble(fold->duration_ms);
    PyObject *bucket = PyLong_FromLong(fold->bucket);
    PyObject *one = PyLong_FromLong(1);
    PyObject *cell = PyList_New(C_FIELDS);
    PyObject *request = PyLong_FromLongLong(fold->request_bytes);
    PyObject *response = PyLong_FromLongLong(fold->response_bytes);
    PyObject *failed = PyLong_FromLong(fold->failed);
    PyObject *limited = PyLong_FromLong(fold->limited);
    if (histogram == NULL || duration == NULL || bucket == NULL || one == NULL || cell == NULL
        || request == NULL || response == NULL || failed == NULL || limited == NULL
        || PyDict_SetItem(histogram, bucket, one) < 0) {
        Py_XDECREF(histogram);
        Py_XDECREF(duration);
        Py_XDECREF(cell);
        Py_XDECREF(request);
        Py_XDECREF(response);
        Py_XDECREF(failed);
        Py_XDECREF(limited);
        Py_XDECREF(bucket);
        Py_XDECREF(one);
        return NULL;
    }
    Py_DECREF(bucket);
    PyList_SET_ITEM(cell, C_COUNT, one);
    PyList_SET_ITEM(cell, C_ERRORS, failed);
    PyList_SET_ITEM(cell, C_RATE_LIMITED, limited);
    PyList_SET_ITEM(cell, C_SUM, Py_NewRef(duration));
    PyList_SET_ITEM(cell, C_MIN, Py_NewRef(duration));
    PyList_SET_ITEM(cell, C_MAX, duration);
    PyList_SET_ITEM(cell, C_REQUEST, request);
    PyList_SET_ITEM(cell, C_RESPONSE, response);
    PyList_SET_ITEM(cell, C_HISTOGRAM, histogram);
    return cell;
}

/* The request's sums into a cell's pending sums: 0 when added, 1 when the
 * cell's values are not the plain shape or a sum would pass 64 bits
 * (nothing changed: the caller stops). */
static int
add_pending(PendingList *sums, const Fold *fold)
{
    Py_ssize_t bucket = C_FIELDS + fold->bucket;
    if (bucket >= sums->length || !aegis_can_count(sums, C_COUNT)
        || (fold->failed && !aegis_can_count(sums, C_ERRORS))
        || (fold->limited && !aegis_can_count(sums, C_RATE_LIMITED))
        || !aegis_can_sum(sums, C_SUM, 0) || !aegis_can_sum(sums, C_MIN, 0)
        || !aegis_can_sum(sums, C_MAX, 0) || !aegis_can_add(sums, C_REQUEST, fold->request_bytes)
        || !aegis_can_add(sums, C_RESPONSE, fold->response_bytes)
        || !aegis_can_count(sums, bucket)) {
        return 1;
    }
    aegis_add_count(sums, C_COUNT, 1);
    if (fold->failed) {
        aegis_add_count(sums, C_ERRORS, 1);
    }
    if (fold->limited) {
        aegis_add_count(sums, C_RATE_LIMITED, 1);
    }
    aegis_add_sum(sums, C_SUM, fold->duration_ms);
    if (fold->duration_ms < aegis_current(sums, C_MIN)) {
        aegis_set_float(sums, C_MIN, fold->duration_ms);
    }
    if (fold->duration_ms > aegis_current(sums, C_MAX)) {
        aegis_set_float(sums, C_MAX, fold->duration_ms);
    }
    aegis_add_count(sums, C_REQUEST, fold->request_bytes);
    aegis_add_count(sums, C_RESPONSE, fold->response_bytes);
    aegis_add_count(sums, bucket, 1);
    return 0;
}

/* Fold into the delta's cell of (bucket, route, method, class): a new cell
 * is made whole at once, an existing one gets pending sums, found by the key
 * remembered (the route and method by identity) or looked up once. 0, 1 to
 * stop (nothing changed), -1 with an error (nothing changed). */
static int
roll(PyObject *cells, FoldPendingObject *pending, long long bucket, PyObject *route,
     PyObject *method, long klass, long buckets, const Fold *fold)
{
    PendingList *sums = aegis_pending_key(pending, bucket, route, method, klass);
    if (sums != NULL) {
        return add_pending(sums, fold);
    }
    PyObject *bucket_object = PyLong_FromLongLong(bucket);
    PyObject *klass_object = PyLong_FromLong(klass);
    PyObject *key = bucket_object != NULL && klass_object != NULL
                        ? PyTuple_Pack(4, bucket_object, route, method, klass_object)
                        : NULL;
    Py_XDECREF(bucket_object);
    Py_XDECREF(klass_object);
    if (key == NULL) {
        return -1;
    }
    PyObject *cell = PyDict_GetItemWithError(cells, key);  /* borrowed */
    if (cell == NULL) {
        int status = -1;
        if (!PyErr_Occurred()) {
            cell = new_cell(fold);
            status = cell != NULL ? PyDict_SetItem(cells, key, cell) : -1;
            Py_XDECREF(cell);
        }
        Py_DECREF(key);
        return status;
    }
    Py_DECREF(key);
    sums = aegis_pending_cell(pending, cell, C_FIELDS, buckets);
    if (sums == NULL) {
        return 1;  /* another shape, or no room: the Python loop, which settles first */
    }
    aegis_pending_remember(pending, bucket, route, method, klass, sums);
    return add_pending(sums, fold);
}

/* The record's id: the finalizer's prefix (hex digits) and the sequence
 * number as 16 hex digits, as f"{prefix}{sequence:016x}" writes it. */
static PyObject *
record_id(PyObject *prefix, unsigned long long sequence)
{
    static const char HEX[] = "0123456789abcdef";
    char digits[16];
    for (int position = 15; position >= 0; position--) {  /* snprintf costs 20 times more */
        digits[position] = HEX[sequence & 15];
        sequence >>= 4;
    }
    Py_ssize_t length = PyUnicode_GET_LENGTH(prefix);
    PyObject *id = PyUnicode_New(length + 16, 127);
    if (id == NULL) {
        return NULL;
    }
    memcpy(PyUnicode_1BYTE_DATA(id), PyUnicode_1BYTE_DATA(prefix), (size_t)length);
    memcpy(PyUnicode_1BYTE_DATA(id) + length, digits, 16);
    return id;
}

/* tuple.__new__(record_type, fields): the fields are stolen, all or none.
 * The record holds atoms only (str, int, float, None) and its type none of
 * its instances, so it can never be part of a reference cycle: it leaves
 * the collector's lists, as CPython untracks such plain tuples, so the
 * records waiting for the sink cost the collector nothing. */
static PyObject *
new_record(PyTypeObject *record_type, PyObject *fields[RECORD_FIELDS])
{
    PyObject *record = aegis_reused_record(record_type);
    if (record == NULL) {
        record = record_type->tp_alloc(record_type, RECORD_FIELDS);
    }
    for (Py_ssize_t position = 0; position < RECORD_FIELDS; position++) {
        if (record != NULL) {
            PyTuple_SET_ITEM(record, position, fields[position]);
        }
        else {
            Py_DECREF(fields[position]);
        }
    }
    if (record != NULL) {
#if PY_VERSION_HEX >= 0x030E0000
        /* 3.14 caches a tuple's hash, -1 meaning "not computed": tp_alloc
         * leaves 0, which tuple.__new__ would not. */
        ((PyTupleObject *)record)->ob_hash = -1;
#endif
        if (PyObject_GC_IsTracked(record)) {
            PyObject_GC_UnTrack(record);
        }
    }
    return record;
}

static inline int
lower_hex(const unsigned char *text, Py_ssize_t count)
{
    for (Py_ssize_t position = 0; position < count; position++) {
        unsigned char c = text[position];
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) {
            return 0;
        }
    }
    return 1;
}

static inline int
all_zeros(const unsigned char *text, Py_ssize_t count)
{
    for (Py_ssize_t position = 0; position < count; position++) {
        if (text[position] != '0') {
            return 0;
        }
    }
    return 1;
}

/* trace_context.parse_traceparent for a header's bytes (or an ASCII str's):
 * 1 with the ids as new str, 0 when it is not valid, -1 on an error. */
static int
parse_traceparent(const unsigned char *text, Py_ssize_t length, PyObject **trace_id,
                  PyObject **span_id)
{
    if (length > 512) {
        return 0;
    }
    while (length > 0 && (text[0] == ' ' || text[0] == '\t')) {  /* value.strip(" \t") */
        text++;
        length--;
    }
    while (length > 0 && (text[length - 1] == ' ' || text[length - 1] == '\t')) {
        length--;
    }
    /* version-trace_id-parent_id-flags, 55 characters, then maybe "-" and more */
    if (length < 55 || text[2] != '-' || text[35] != '-' || text[52] != '-'
        || !lower_hex(text, 2) || !lower_hex(text + 3, 32) || !lower_hex(text + 36, 16)
        || !lower_hex(text + 53, 2)) {
        return 0;
    }
    if (length > 55) {
        if (text[55] != '-' || (text[0] == '0' && text[1] == '0')) {
            return 0;
        }
        for (Py_ssize_t position = 56; position < length; position++) {
            if (text[position] < 0x20 || text[position] == 0x7f) {
                return 0;
            }
        }
    }
    if ((text[0] == 'f' && text[1] == 'f') || all_zeros(text + 3, 32)
        || all_zeros(text + 36, 16)) {
        return 0;
    }
    *trace_id = PyUnicode_FromStringAndSize((const char *)text + 3, 32);
    *span_id = *trace_id != NULL ? PyUnicode_FromStringAndSize((const char *)text + 36, 16) : NULL;
    if (*span_id == NULL) {
        Py_CLEAR(*trace_id);
        return -1;
    }
    return 1;
}

/* Whether the compiled loop takes this trace context: none, an exact bytes,
 * an exact ASCII str, or something else (a span); a str or bytes subclass,
 * or a str past ASCII, is the Python loop's. */
static int
trace_taken(PyObject *trace)
{
    if (trace == NULL || trace == Py_None || PyBytes_CheckExact(trace)) {
        return 1;
    }
    if (PyUnicode_CheckExact(trace)) {
#if PY_VERSION_HEX < 0x030C0000
        if (!PyUnicode_IS_READY(trace)) {
            return 0;
        }
#endif
        return PyUnicode_IS_ASCII(trace);
    }
    return !PyUnicode_Check(trace) && !PyBytes_Check(trace);
}

/* Whether 0 < value < limit: 1, 0, or -1 with an error set. */
static int
in_range(PyObject *value, PyObject *zero, PyObject *limit)
{
    int above = PyObject_RichCompareBool(value, zero, Py_GT);
    return above <= 0 ? above : PyObject_RichCompareBool(value, limit, Py_LT);
}

/* 0, 1 << 128 and 1 << 64: the bounds of a span's ids, made at the module's
 * start (again after an interpreter's restart, as the interned strings: what
 * an earlier interpreter made is gone with it, never released here). */
static PyObject *id_zero, *id_limit128, *id_limit64;

int
aegis_finalize_init(void)
{
    id_zero = PyLong_FromLong(0);
    id_limit128 = PyLong_FromString("100000000000000000000000000000000", NULL, 16);
    id_limit64 = PyLong_FromString("10000000000000000", NULL, 16);
    return id_zero != NULL && id_limit128 != NULL && id_limit64 != NULL ? 0 : -1;
}

/* A span's ids as trace_context.trace_ids gives them: `{:032x}`/`{:016x}` of
 * a valid context's ints in range, else None, None (an Exception raised by
 * the span's code included). 0, or -1 with an error set. */
static int
span_ids(PyObject *span, PyObject **trace_id, PyObject **span_id)
{
    *trace_id = *span_id = NULL;
    PyObject *context = PyObject_CallMethodNoArgs(span, aegis_str.get_span_context);
    PyObject *valid = context != NULL ? PyObject_GetAttr(context, aegis_str.is_valid) : NULL;
    int ok = valid != NULL ? PyObject_IsTrue(valid) : -1;
    Py_XDECREF(valid);
    PyObject *high = NULL, *low = NULL;
    if (ok > 0) {
        high = PyObject_GetAttr(context, aegis_str.trace_id);
        ok = high == NULL ? -1 : PyLong_CheckExact(high);
    }
    if (ok > 0) {
        low = PyObject_GetAttr(context, aegis_str.span_id);
        ok = low == NULL ? -1 : PyLong_CheckExact(low);
    }
    if (ok > 0) {
        ok = in_range(high, id_zero, id_limit128);
    }
    if (ok > 0) {
        ok = in_range(low, id_zero, id_limit64);
    }
    if (ok > 0) {
        *trace_id = PyObject_Format(high, aegis_str.hex32);
        *span_id = *trace_id != NULL ? PyObject_Format(low, aegis_str.hex16) : NULL;
        if (*span_id == NULL) {
            Py_CLEAR(*trace_id);
            ok = -1;
        }
    }
    Py_XDECREF(context);
    Py_XDECREF(high);
    Py_XDECREF(low);
    if (ok < 0) {
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            return -1;
        }
        PyErr_Clear();  /* not a span after all: nothing to link */
    }
    if (*trace_id == NULL) {
        *trace_id = Py_NewRef(Py_None);
        *span_id = Py_NewRef(Py_None);
    }
    return 0;
}

/* The record's trace_id and span_id (new references) of an item's trace
 * context that trace_taken accepted: 0, or -1 with an error set (as the
 * Python loop, an Exception counts the item invalid). */
static int
trace_ids(PyObject *trace, PyObject **trace_id, PyObject **span_id)
{
    if (trace == NULL || trace == Py_None) {
        *trace_id = Py_NewRef(Py_None);
        *span_id = Py_NewRef(Py_None);
        return 0;
    }
    if (PyBytes_CheckExact(trace) || PyUnicode_CheckExact(trace)) {
        const unsigned char *text = PyBytes_CheckExact(trace)
            ? (const unsigned char *)PyBytes_AS_STRING(trace) : PyUnicode_1BYTE_DATA(trace);
        Py_ssize_t length = PyBytes_CheckExact(trace) ? PyBytes_GET_SIZE(trace)
                                                      : PyUnicode_GET_LENGTH(trace);
        int parsed = parse_traceparent(text, length, trace_id, span_id);
        if (parsed < 0) {
            return -1;
        }
        if (parsed == 0) {
            *trace_id = Py_NewRef(Py_None);
            *span_id = Py_NewRef(Py_None);
        }
        return 0;
    }
    return span_ids(trace, trace_id, span_id);
}

typedef struct {
    PyObject *out, *cells, *prefix, *methods, *clean_routes, *clean_clients, *chance, *rate;
    PyTypeObject *record_type;
    FoldPendingObject *pending;  /* the rollup cells' pending sums */
    double wall_offset, slow, low_ms, scale, shift;
    long last;
    Py_ssize_t path_limit, error_limit, client_limit, clean_clients_limit;
    int sampling;
    long long *state;
} Run;

enum { TAKEN, STOP, FAILED };

/* One item: TAKEN (recorded, sampled out or counted invalid), STOP (left to
 * the Python loop, nothing changed) or FAILED (an error that is no Exception,
 * to be raised). */
static int
finalize_held(Run *run, const ItemObject *item)
{
    PyObject *method = item->method, *route = item->route, *path = item->path;
    PyObject *status_object = item->status, *error = item->error, *client = item->client;
    if (method == NULL || route == NULL || path == NULL || status_object == NULL
        || error == NULL || !item->has_end
        || (item->forwarded != NULL && item->forwarded != Py_None)
        || !trace_taken(item->trace)
        || !PyUnicode_CheckExact(method) || !PyUnicode_CheckExact(route)
        || !PyUnicode_CheckExact(path) || !PyUnicode_CheckExact(error)
        || !PyLong_CheckExact(status_object)
        || !small_count(item->request_count, item->request_bytes)
        || !small_count(item->response_count, item->response_bytes)) {
        return STOP;
    }
    int overflow = 0;
    long long status = PyLong_AsLongLongAndOverflow(status_object, &overflow);
    if (overflow || status < 0 || status >= SMALL) {
        PyErr_Clear();
        return STOP;
    }
    Py_ssize_t error_length = PyUnicode_GET_LENGTH(error);
    if (printable_ascii(path, run->path_limit) != 1
        || (error_length && printable_ascii(error, run->error_limit) != 1)) {
        return STOP;
    }
    double duration_ms = (item->end - item->start) * 1000.0;
    double ttfb_ms = item->has_ttfb ? (item->ttfb - item->start) * 1000.0 : 0.0;
    double timestamp = item->start + run->wall_offset;
    if (!isfinite(duration_ms) || !isfinite(ttfb_ms) || !(fabs(timestamp) < TIMESTAMP_LIMIT)) {
        return STOP;
    }
    PyObject *client_ip = Py_None;  /* borrowed */
    if (client != NULL && client != Py_None) {
        if (!PyTuple_CheckExact(client)) {
            return STOP;
        }
        if (PyTuple_GET_SIZE(client) > 0) {
            client_ip = PyTuple_GET_ITEM(client, 0);
        }
    }
    if (client_ip != Py_None) {
        if (!PyUnicode_CheckExact(client_ip)) {
            return STOP;
        }
        int clean = PySet_Contains(run->clean_clients, client_ip);
        if (clean < 0) {
            PyErr_Clear();
            return STOP;
        }
        if (!clean) {
            /* Storable as it is (what Finalizer._client_text checks with
             * client_field): remembered as clean, the set emptied first when
             * full, as there. Other text is the Python loop's. */
            if (printable_ascii(client_ip, run->client_limit) != 1) {
                return STOP;
            }
            if (PySet_GET_SIZE(run->clean_clients) >= run->clean_clients_limit
                && PySet_Clear(run->clean_clients) < 0) {
                PyErr_Clear();
                return STOP;
            }
            if (PySet_Add(run->clean_clients, client_ip) < 0) {
                PyErr_Clear();
                return STOP;
            }
        }
    }
    int clean = PySet_Contains(run->clean_routes, route);
    if (clean != 1) {
        PyErr_Clear();
        return STOP;
    }
    PyObject *folded = PyDict_GetItemWithError(run->methods, method);  /* borrowed */
    if (folded == NULL) {
        PyErr_Clear();
        return STOP;
    }
    Py_INCREF(folded);
    /* The folded methods are ASCII: compared in place, not through the
     * general comparison (a tenth of its cost). */
    int head = PyUnicode_IS_COMPACT_ASCII(folded)
                   ? PyUnicode_GET_LENGTH(folded) == 4
                         && memcmp(PyUnicode_1BYTE_DATA(folded), "HEAD", 4) == 0
                   : PyUnicode_CompareWithASCIIString(folded, "HEAD") == 0;
    long long response_bytes = head ? 0 : item->response_bytes;
    int failed = status >= 500 || error_length > 0;

    Fold fold = {
        .duration_ms = duration_ms,
        .failed = failed,
        .limited = status == 429,
        .request_bytes = item->request_bytes,
        .response_bytes = response_bytes,
    };
    fold.bucket =
        aegis_duration_bucket(duration_ms, run->low_ms, run->scale, run->shift, run->last);
    long long bucket = bucket_start(timestamp);
    long klass = (long)(status / 100);

    int outcome = FAILED;
    PyObject *fields[RECORD_FIELDS] = {NULL};
    /* The duration's float object is made only where it is kept (a new
     * cell, a record): not for the requests sampling leaves out. */
    int rolled = roll(run->cells, run->pending, bucket, route, folded,
                      0 < klass && klass < 6 ? klass : 5, run->last + 1, &fold);
    if (rolled == 1) {
        outcome = STOP;
        goto done;
    }
    if (rolled < 0) {
        goto invalid;
    }
    run->state[S_ROLLED]++;
    if (run->sampling && !(status >= 500 || error_length || duration_ms >= run->slow)) {
        /* Python code: it may take or replace the rollups, and so settle
         * the pending sums; the keys remembered stay with the cells dict this
         * call was given (as the Python loop keeps adding to the delta it
         * started with), and the next call, given another, forgets them. */
        PyObject *chance = PyObject_CallNoArgs(run->chance);
        int out = chance == NULL ? -1 : PyObject_RichCompareBool(chance, run->rate, Py_GE);
        Py_XDECREF(chance);
        if (out < 0) {
            goto invalid;
        }
        if (out) {
            run->state[S_SAMPLED]++;
            outcome = TAKEN;
            goto done;
        }
    }
    if (trace_ids(item->trace, &fields[12], &fields[13]) < 0) {
        goto invalid;
    }
    fields[0] = record_id(run->prefix, (unsigned long long)run->state[S_SEQUENCE] + 1);
    fields[1] = PyFloat_FromDouble(timestamp);
    fields[2] = Py_NewRef(folded);
    fields[3] = Py_NewRef(route);
    fields[4] = Py_NewRef(path);
    fields[5] = Py_NewRef(status_object);
    fields[6] = PyFloat_FromDouble(duration_ms);
    fields[7] = item->has_ttfb ? PyFloat_FromDouble(ttfb_ms) : Py_NewRef(Py_None);
    fields[8] = PyLong_FromLongLong(item->request_bytes);
    fields[9] = PyLong_FromLongLong(response_bytes);
    fields[10] = Py_NewRef(client_ip);
    fields[11] = Py_NewRef(error);
    for (int position = 0; position < RECORD_FIELDS; position++) {
        if (fields[position] == NULL) {
            for (int other = 0; other < RECORD_FIELDS; other++) {
                Py_XDECREF(fields[other]);
            }
            goto invalid;
        }
    }
    PyObject *record = new_record(run->record_type, fields);
    if (record == NULL) {
        goto invalid;
    }
    run->state[S_SEQUENCE]++;
    /* Outside the per-item handling in the Python loop too: raised. */
    int appended = PyList_Append(run->out, record);
    Py_DECREF(record);
    outcome = appended < 0 ? FAILED : TAKEN;
    goto done;
invalid:
    /* Counted and skipped, as the Python loop's `except Exception` does. */
    if (PyErr_ExceptionMatches(PyExc_Exception)) {
        PyErr_Clear();
        run->state[S_INVALID]++;
        outcome = TAKEN;
    }
done:
    Py_DECREF(folded);
    return outcome;
}

/* One item, its fields held meanwhile: the sampler may run Python code that
 * changes the item (the Python loop unpacks the fields before calling it, so
 * its record keeps what was there). */
static int
finalize_one(Run *run, PyObject *object)
{
    if (Py_TYPE(object) != &AegisItemType) {
        return STOP;
    }
    ItemObject held = *(ItemObject *)object;  /* the values only: never used as an object */
    PyObject **fields[] = {&held.method, &held.route, &held.path, &held.status, &held.client,
                           &held.forwarded, &held.error, &held.trace, &held.request_count,
                           &held.response_count};
    size_t count = sizeof fields / sizeof fields[0];
    for (size_t position = 0; position < count; position++) {
        Py_XINCREF(*fields[position]);
    }
    int outcome = finalize_held(run, &held);
    for (size_t position = 0; position < count; position++) {
        Py_XDECREF(*fields[position]);
    }
    return outcome;
}

static int
as_size(PyObject *value, Py_ssize_t *out)
{
    *out = PyLong_AsSsize_t(value);
    return *out == -1 && PyErr_Occurred() ? -1 : 0;
}

static int
as_double(PyObject *value, double *out)
{
    *out = PyFloat_AsDouble(value);
    return *out == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* finalize_items(items, out, state, wall_offset, prefix, cells, record_type,
 *                methods, clean_routes, clean_clients, path_limit,
 *                error_limit, sample_rate or None, slow_ms, chance,
 *                (low_ms, scale, shift, last, client_limit, clean_clients_limit),
 *                pending) where pending is the cells' FoldPending(). */
PyObject *
aegis_finalize_items(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 17) {
        PyErr_SetString(PyExc_TypeError, "finalize_items takes 17 arguments");
        return NULL;
    }
    if (Py_TYPE(args[16]) != &AegisFoldPendingType
        || ((FoldPendingObject *)args[16])->ring != NULL) {
        PyErr_SetString(PyExc_TypeError, "finalize_items: pending must be a FoldPending()");
        return NULL;
    }
    PyObject *items = args[0], *constants = args[15];
    Run run = {
        .out = args[1], .prefix = args[4], .cells = args[5],
        .methods = args[7], .clean_routes = args[8], .clean_clients = args[9],
        .rate = args[12], .chance = args[14],
        .pending = (FoldPendingObject *)args[16],
    };
    if (!PyList_CheckExact(items) || !PyList_CheckExact(run.out) || !PyDict_CheckExact(run.cells)
        || !PyDict_CheckExact(run.methods) || !PySet_CheckExact(run.clean_routes)
        || !PySet_CheckExact(run.clean_clients) || !PyType_Check(args[6])
        || !PyTuple_CheckExact(constants) || PyTuple_GET_SIZE(constants) != 6
        || !PyUnicode_CheckExact(run.prefix) || !PyUnicode_IS_COMPACT_ASCII(run.prefix)) {
        PyErr_SetString(PyExc_TypeError, "finalize_items: unexpected argument types");
        return NULL;
    }
    run.record_type = (PyTypeObject *)args[6];
    if (!PyType_IsSubtype(run.record_type, &PyTuple_Type)
        || run.record_type->tp_basicsize != PyTuple_Type.tp_basicsize
        || run.record_type->tp_itemsize != PyTuple_Type.tp_itemsize) {
        PyErr_SetString(PyExc_TypeError,
                        "finalize_items: the record type must be a plain tuple subclass");
        return NULL;
    }
    run.sampling = run.rate != Py_None;
    if (as_double(args[3], &run.wall_offset) < 0 || as_size(args[10], &run.path_limit) < 0
        || as_size(args[11], &run.error_limit) < 0 || as_double(args[13], &run.slow) < 0
        || as_double(PyTuple_GET_ITEM(constants, 0), &run.low_ms) < 0
        || as_double(PyTuple_GET_ITEM(constants, 1), &run.scale) < 0
        || as_double(PyTuple_GET_ITEM(constants, 2), &run.shift) < 0) {
        return NULL;
    }
    run.last = PyLong_AsLong(PyTuple_GET_ITEM(constants, 3));
    run.client_limit = PyLong_AsSsize_t(PyTuple_GET_ITEM(constants, 4));
    run.clean_clients_limit = PyLong_AsSsize_t(PyTuple_GET_ITEM(constants, 5));
    if (PyErr_Occurred()) {
        return NULL;
    }
    if (run.last == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[2], &view, PyBUF_WRITABLE | PyBUF_FORMAT) < 0) {
        return NULL;
    }
    if (view.itemsize != 8 || view.format == NULL || strcmp(view.format, "q") != 0
        || view.len < (Py_ssize_t)(S_FIELDS * sizeof(long long))) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_TypeError, "finalize_items: state must be array('q') of 5");
        return NULL;
    }
    run.state = (long long *)view.buf;
    if (run.state[S_INDEX] < 0) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "finalize_items: a negative index");
        return NULL;
    }
    aegis_pending_cells(run.pending, run.cells);
    PyObject *result = Py_None;
    while (run.state[S_INDEX] < PyList_GET_SIZE(items)) {
        PyObject *item = Py_NewRef(PyList_GET_ITEM(items, (Py_ssize_t)run.state[S_INDEX]));
        int outcome = finalize_one(&run, item);
        Py_DECREF(item);
        if (outcome == STOP) {
            break;
        }
        run.state[S_INDEX]++;
        if (outcome == FAILED) {
            result = NULL;
            break;
        }
    }
    PyBuffer_Release(&view);
    return Py_XNewRef(result);
}
