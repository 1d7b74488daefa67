/* The flusher's fold of drained items into the realtime ring and the
 * per-label totals (aegis_mw/core/aggregates.py's _fold, then
 * labeled.py's LabeledTotals.fold), one item at a time, for compiled inbox
 * items.
 *
 * It takes the common case only: an HttpItem with finite times, a plain
 * status, native byte counts and a plain error, whose second is the one its
 * ring slot holds and whose (method, route, status) the totals already know.
 * At the first item it does not take it stops and returns that item's index;
 * the Python code, which stays the reference, settles the pending sums and
 * folds that one, and the caller calls again for the rest.
 *
 * The sums go to a FoldPending (fold_pending.c) as C numbers, not into the
 * lists: they are written there when someone reads or the Python code takes
 * over, float for float what the Python code would have made, as each list
 * still sees the items in their order. Everything an item needs is checked
 * before anything changes; a failure (no memory) stops, with nothing
 * changed. */
#include "hotpath.h"
#include <math.h>

/* The ring slot's layout (aggregates.py) and a series' (labeled.py);
 * FOLD_LAYOUT hands them to Python, which uses this code only where they
 * match its own. */
enum { R_SECOND, R_REQUESTS, R_ERRORS, R_DURATION_SUM, R_STATUS_BASE = 3, R_MIN = 9, R_MAX = 10,
       R_HIST_BASE = 11 };
enum { L_COUNT, L_DURATION_SUM, L_TTFB_COUNT, L_TTFB_SUM, L_REQUEST, L_RESPONSE, L_BUCKETS };
#define RING_MASK 127
#define SMALL (1LL << 30)
#define SECOND_LIMIT 1e15
#define MAX_BOUNDS 64

PyObject *
aegis_fold_layout(void)
{
    return Py_BuildValue("(iiiiiiiii)(iiiiiii)", RING_MASK, R_SECOND, R_REQUESTS, R_ERRORS,
                         R_DURATION_SUM, R_STATUS_BASE, R_MIN, R_MAX, R_HIST_BASE, L_COUNT,
                         L_DURATION_SUM, L_TTFB_COUNT, L_TTFB_SUM, L_REQUEST, L_RESPONSE,
                         L_BUCKETS);
}

/* bisect_left over the bounds. */
static Py_ssize_t
bisect_left(const double *bounds, Py_ssize_t count, double value)
{
    Py_ssize_t low = 0, high = count;
    while (low < high) {
        Py_ssize_t middle = (low + high) / 2;
        if (bounds[middle] < value) {
            low = middle + 1;
        }
        else {
            high = middle;
        }
    }
    return low;
}

/* A label set's entry as one call has found it already, keyed by the
 * identity of the item's (method, route, status) objects: items of one app
 * carry the same few objects again and again (its route templates, interned
 * method names, small ints), so most items skip building a key tuple, hashing
 * it, looking it up and comparing it, and taking the histogram's buffer.
 * Everything in it is a strong reference, released when the call returns:
 * the objects compared by identity stay alive, so an address seen again is
 * the same object. The entries are those of `known` as the call found them:
 * nothing else changes `known` during a call, which runs under the totals'
 * lock, as the Python fold does (aggregates.py). */
#define KEY_CACHE_BITS 6
#define KEY_CACHE (1 << KEY_CACHE_BITS)
typedef struct {
    PyObject *method, *route, *status, *entry;
    Py_buffer view; /* of the entry's fine histogram: 8-byte "Q" counts */
} CachedKey;

typedef struct {
    PyObject *ring, *good, *known;
    FoldPendingObject *pending;
    double bounds[MAX_BOUNDS];
    Py_ssize_t bound_count, slot_length, series_length;
    double low_ms, scale, shift;
    long last;
    CachedKey cache[KEY_CACHE];
} Fold;

static void
cache_release(CachedKey *cached)
{
    if (cached->entry != NULL) {
        PyBuffer_Release(&cached->view);
        Py_CLEAR(cached->method);
        Py_CLEAR(cached->route);
        Py_CLEAR(cached->status);
        Py_CLEAR(cached->entry);
    }
}

/* The cached key of (method, route, status): found, or looked up in `known`
 * and put in its slot. NULL when `known` has no entry of the plain shape or
 * its histogram is not 8-byte counts (the Python code's), no error set. */
static CachedKey *
known_entry(Fold *fold, PyObject *method, PyObject *route, PyObject *status)
{
    uintptr_t mix = ((uintptr_t)method >> 4) ^ ((uintptr_t)route >> 3) ^ ((uintptr_t)status >> 5);
    mix ^= mix >> KEY_CACHE_BITS;
    CachedKey *cached = &fold->cache[mix & (KEY_CACHE - 1)];
    if (cached->entry != NULL && cached->method == method && cached->route == route
        && cached->status == status) {
        return cached;
    }
    PyObject *raw = PyTuple_Pack(3, method, route, status);
    if (raw == NULL) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *entry = PyDict_GetItemWithError(fold->known, raw); /* borrowed */
    Py_DECREF(raw);
    if (entry == NULL || !PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 4) {
        PyErr_Clear();
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(PyTuple_GET_ITEM(entry, 2), &view, PyBUF_WRITABLE | PyBUF_FORMAT)
        < 0) {
        PyErr_Clear();
        return NULL;
    }
    if (view.itemsize != 8 || view.format == NULL || strcmp(view.format, "Q") != 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    cache_release(cached);
    cached->method = Py_NewRef(method);
    cached->route = Py_NewRef(route);
    cached->status = Py_NewRef(status);
    cached->entry = Py_NewRef(entry);
    cached->view = view;
    return cached;
}

/* The items between two settles stay far below where a count could pass 64
 * bits (each adds 1 to one); byte counts, which can be any 64-bit number,
 * are checked (can_add). */
#define MAX_PENDING_ITEMS (1LL << 31)

/* 1 when the item was folded, 0 to stop (nothing changed). */
static int
fold_one(Fold *fold, PyObject *object)
{
    if (Py_TYPE(object) != &AegisItemType) {
        return 0;
    }
    ItemObject *item = (ItemObject *)object;
    if (!item->has_end || item->status == NULL || !PyLong_CheckExact(item->status)
        || item->error == NULL || !PyUnicode_CheckExact(item->error) || item->method == NULL
        || !PyUnicode_CheckExact(item->method) || item->route == NULL
        || !PyUnicode_CheckExact(item->route) || item->request_count != NULL
        || item->response_count != NULL) {
        return 0;
    }
    int overflow = 0;
    long long status = PyLong_AsLongLongAndOverflow(item->status, &overflow);
    if (overflow || status < 0 || status >= SMALL) {
        PyErr_Clear();
        return 0;
    }
    double seconds = item->end - item->start;
    double duration_ms = seconds * 1000.0;
    double ttfb = item->has_ttfb ? item->ttfb - item->start : 0.0;
    if (!isfinite(duration_ms) || !isfinite(ttfb) || !(fabs(item->end) < SECOND_LIMIT)) {
        return 0;
    }
    FoldPendingObject *pending = fold->pending;
    if (pending->items >= MAX_PENDING_ITEMS) {
        return 0;
    }
    /* The ring's slot: the one of this second already (a new second, or a
     * late item, is the Python code's). */
    long long second = (long long)item->end;
    PyObject *slot = PyList_GET_ITEM(fold->ring, (Py_ssize_t)(second & RING_MASK));
    if (!PyList_CheckExact(slot) || PyList_GET_SIZE(slot) != fold->slot_length) {
        return 0;
    }
    PyObject *held_second = PyList_GET_ITEM(slot, R_SECOND);
    long long held = PyLong_CheckExact(held_second) ? PyLong_AsLongLong(held_second) : second + 1;
    if (held != second || PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    /* The label set's entry: (requests key, series, fine histogram, is HEAD). */
    CachedKey *cached = known_entry(fold, item->method, item->route, item->status);
    if (cached == NULL) {
        return 0;
    }
    PyObject *entry = cached->entry;
    PyObject *key3 = PyTuple_GET_ITEM(entry, 0), *series = PyTuple_GET_ITEM(entry, 1);
    int head = PyTuple_GET_ITEM(entry, 3) == Py_True;
    if (!PyList_CheckExact(series) || PyList_GET_SIZE(series) != fold->series_length) {
        return 0;
    }
    /* Their pending sums (made when new: that changes no figure). */
    PendingList *ring_sums = aegis_pending_list(pending, slot, fold->slot_length);
    PendingList *series_sums =
        ring_sums != NULL ? aegis_pending_list(pending, series, fold->series_length) : NULL;
    long long *count = series_sums != NULL ? aegis_pending_count(pending, key3) : NULL;
    if (count == NULL) {
        return 0;
    }
    long bucket =
        aegis_duration_bucket(duration_ms, fold->low_ms, fold->scale, fold->shift, fold->last);
    long long request_bytes = item->request_bytes;
    long long response_bytes = head ? 0 : item->response_bytes;
    int failed = status >= 500 || PyUnicode_GET_LENGTH(item->error) > 0;
    long klass = (long)(status / 100);
    Py_ssize_t status_index = R_STATUS_BASE + (0 < klass && klass < 6 ? klass : 5);
    Py_ssize_t ttfb_base = L_BUCKETS + fold->bound_count + 1;
    Py_ssize_t series_bucket = L_BUCKETS + bisect_left(fold->bounds, fold->bound_count, seconds);
    Py_ssize_t ttfb_bucket = ttfb_base + bisect_left(fold->bounds, fold->bound_count, ttfb);
    /* Everything checked before anything changes. */
    if (!aegis_can_count(ring_sums, R_REQUESTS) || !aegis_can_count(ring_sums, R_ERRORS)
        || !aegis_can_count(ring_sums, status_index)
        || !aegis_can_count(ring_sums, R_HIST_BASE + bucket)
        || !aegis_can_sum(ring_sums, R_DURATION_SUM, 0) || !aegis_can_sum(ring_sums, R_MIN, 0)
        || !aegis_can_sum(ring_sums, R_MAX, 0) || !aegis_can_count(series_sums, L_COUNT)
        || !aegis_can_count(series_sums, series_bucket)
        || !aegis_can_add(series_sums, L_REQUEST, request_bytes)
        || !aegis_can_add(series_sums, L_RESPONSE, response_bytes)
        || !aegis_can_sum(series_sums, L_DURATION_SUM, 1)
        || (item->has_ttfb
            && (!aegis_can_count(series_sums, L_TTFB_COUNT)
                || !aegis_can_count(series_sums, ttfb_bucket)
                || !aegis_can_sum(series_sums, L_TTFB_SUM, 1)))) {
        return 0;
    }
    if (bucket >= cached->view.len / 8) {
        return 0;
    }
    /* The one step that can fail and changes something, first. */
    if (PyList_Append(fold->good, object) < 0) {
        /* A failure (no memory) leaves the item, unchanged, to the Python code. */
        PyErr_Clear();
        return 0;
    }
    /* The ring slot (aggregates._fold). */
    aegis_add_count(ring_sums, R_REQUESTS, 1);
    if (failed) {
        aegis_add_count(ring_sums, R_ERRORS, 1);
    }
    aegis_add_sum(ring_sums, R_DURATION_SUM, duration_ms);
    aegis_add_count(ring_sums, status_index, 1);
    aegis_add_count(ring_sums, R_HIST_BASE + bucket, 1);
    if (duration_ms < aegis_current(ring_sums, R_MIN)) {
        aegis_set_float(ring_sums, R_MIN, duration_ms);
    }
    if (duration_ms > aegis_current(ring_sums, R_MAX)) {
        aegis_set_float(ring_sums, R_MAX, duration_ms);
    }
    /* The series (LabeledTotals.fold). */
    aegis_add_count(series_sums, L_COUNT, 1);
    aegis_add_sum(series_sums, L_DURATION_SUM, seconds);
    aegis_add_count(series_sums, series_bucket, 1);
    if (item->has_ttfb) {
        aegis_add_count(series_sums, L_TTFB_COUNT, 1);
        aegis_add_sum(series_sums, L_TTFB_SUM, ttfb);
        aegis_add_count(series_sums, ttfb_bucket, 1);
    }
    aegis_add_count(series_sums, L_REQUEST, request_bytes);
    aegis_add_count(series_sums, L_RESPONSE, response_bytes);
    *count += 1;
    pending->items++;
    ((unsigned long long *)cached->view.buf)[bucket] += 1;
    return 1;
}

/* fold_items(items, start, good, pending, known, bounds,
 *            (low_ms, scale, shift, last)) -> the index of the first item
 * not folded (len(items) when all were). The ring and the request counts
 * are the pending sums' (a FoldPending), where the items' sums go. */
PyObject *
aegis_fold_items(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "fold_items takes 7 arguments");
        return NULL;
    }
    PyObject *items = args[0], *bounds = args[5], *constants = args[6];
    if (Py_TYPE(args[3]) != &AegisFoldPendingType
        || ((FoldPendingObject *)args[3])->ring == NULL) {
        PyErr_SetString(PyExc_TypeError, "fold_items: pending must be a FoldPending(ring, ...)");
        return NULL;
    }
    FoldPendingObject *pending = (FoldPendingObject *)args[3];
    Fold fold = {.good = args[2], .ring = pending->ring, .known = args[4], .pending = pending};
    Py_ssize_t index = PyLong_AsSsize_t(args[1]);
    if (index == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (index < 0) {
        PyErr_SetString(PyExc_ValueError, "fold_items: a negative index");
        return NULL;
    }
    if (!PyList_CheckExact(items) || !PyList_CheckExact(fold.good)
        || PyList_GET_SIZE(fold.ring) != RING_MASK + 1 || !PyDict_CheckExact(fold.known)
        || !PyTuple_CheckExact(bounds) || PyTuple_GET_SIZE(bounds) > MAX_BOUNDS
        || !PyTuple_CheckExact(constants) || PyTuple_GET_SIZE(constants) != 4) {
        PyErr_SetString(PyExc_TypeError, "fold_items: unexpected argument types");
        return NULL;
    }
    fold.bound_count = PyTuple_GET_SIZE(bounds);
    for (Py_ssize_t position = 0; position < fold.bound_count; position++) {
        PyObject *bound = PyTuple_GET_ITEM(bounds, position);
        if (!PyFloat_CheckExact(bound)) {
            PyErr_SetString(PyExc_TypeError, "fold_items: the bounds must be floats");
            return NULL;
        }
        fold.bounds[position] = PyFloat_AS_DOUBLE(bound);
    }
    fold.series_length = L_BUCKETS + 2 * (fold.bound_count + 1);
    fold.low_ms = PyFloat_AsDouble(PyTuple_GET_ITEM(constants, 0));
    fold.scale = PyFloat_AsDouble(PyTuple_GET_ITEM(constants, 1));
    fold.shift = PyFloat_AsDouble(PyTuple_GET_ITEM(constants, 2));
    fold.last = PyLong_AsLong(PyTuple_GET_ITEM(constants, 3));
    if (PyErr_Occurred()) {
        return NULL;
    }
    fold.slot_length = R_HIST_BASE + fold.last + 1;
    while (index < PyList_GET_SIZE(items)) {
        PyObject *item = Py_NewRef(PyList_GET_ITEM(items, index));
        int folded = fold_one(&fold, item);
        Py_DECREF(item);
        if (!folded) {
            break;
        }
        index++;
    }
    for (int slot = 0; slot < KEY_CACHE; slot++) {
        cache_release(&fold.cache[slot]);
    }
    return PyLong_FromSsize_t(index);
}
