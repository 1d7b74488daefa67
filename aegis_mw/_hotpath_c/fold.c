/* The flusher's fold of drained items into the realtime ring and the
 * per-label totals (aegis_mw/core/aggregates.py's _fold, then
 * labeled.py's LabeledTotals.fold), one item at a time, for compiled inbox
 * items.
 *
 * It takes the common case only: an HttpItem with finite times, a plain
 * status, native byte counts and a plain error, whose second is the one its
 * ring slot holds and whose (method, route, status) the totals already know.
 * At the first item it does not take it stops and returns that item's index;
 * the Python code, which stays the reference, folds that one, and the caller
 * calls again for the rest. Each structure still sees the items in their
 * order, so sums come out float for float as the Python code makes them.
 * Everything an item needs is read and made before anything changes; a
 * failure (no memory) also stops, with nothing changed. */
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

/* value + addend as Python adds them (int 0 + float, float + float); NULL
 * with an error cleared when that fails. */
static PyObject *
number_plus(PyObject *value, double addend)
{
    if (PyFloat_CheckExact(value)) {
        return PyFloat_FromDouble(PyFloat_AS_DOUBLE(value) + addend);
    }
    PyObject *other = PyFloat_FromDouble(addend);
    PyObject *sum = other != NULL ? PyNumber_Add(value, other) : NULL;
    Py_XDECREF(other);
    if (sum == NULL) {
        PyErr_Clear();
    }
    return sum;
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

typedef struct {
    PyObject *ring, *good, *known, *requests;
    double bounds[MAX_BOUNDS];
    Py_ssize_t bound_count, slot_length, series_length;
    double low_ms, scale, shift;
    long last;
} Fold;

/* A list slot holding a new object at `position`, in a batch of changes
 * made only once every new object exists. */
typedef struct {
    PyObject *list;
    Py_ssize_t position;
    PyObject *value;
} Change;

#define MAX_CHANGES 16

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
    PyObject *raw = PyTuple_Pack(3, item->method, item->route, item->status);
    if (raw == NULL) {
        PyErr_Clear();
        return 0;
    }
    PyObject *entry = PyDict_GetItemWithError(fold->known, raw);  /* borrowed */
    Py_DECREF(raw);
    if (entry == NULL || !PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 4) {
        PyErr_Clear();
        return 0;
    }
    PyObject *key3 = PyTuple_GET_ITEM(entry, 0), *series = PyTuple_GET_ITEM(entry, 1);
    PyObject *fine = PyTuple_GET_ITEM(entry, 2);
    int head = PyTuple_GET_ITEM(entry, 3) == Py_True;
    if (!PyList_CheckExact(series) || PyList_GET_SIZE(series) != fold->series_length) {
        return 0;
    }
    PyObject *count = PyDict_GetItemWithError(fold->requests, key3);  /* borrowed */
    if (count == NULL) {
        PyErr_Clear();
        return 0;
    }
    long bucket =
        aegis_duration_bucket(duration_ms, fold->low_ms, fold->scale, fold->shift, fold->last);
    Py_buffer view;
    if (PyObject_GetBuffer(fine, &view, PyBUF_WRITABLE | PyBUF_FORMAT) < 0) {
        PyErr_Clear();
        return 0;
    }
    int folded = 0;
    Change changes[MAX_CHANGES];
    int made = 0;
    PyObject *new_count = NULL;
    if (view.itemsize != 8 || view.format == NULL || strcmp(view.format, "Q") != 0
        || bucket >= view.len / 8) {
        goto done;
    }
    long long request_bytes = item->request_bytes;
    long long response_bytes = head ? 0 : item->response_bytes;
    int failed = status >= 500 || PyUnicode_GET_LENGTH(item->error) > 0;
    long klass = (long)(status / 100);
    Py_ssize_t status_index = R_STATUS_BASE + (0 < klass && klass < 6 ? klass : 5);
    Py_ssize_t ttfb_base = L_BUCKETS + fold->bound_count + 1;

#define CHANGE(target, where, made_value)                                            \
    do {                                                                             \
        PyObject *value_ = (made_value);                                             \
        if (value_ == NULL) {                                                        \
            goto done;                                                               \
        }                                                                            \
        changes[made++] = (Change){(target), (where), value_};                       \
    } while (0)
#define INT_CHANGE(target, where, delta) \
    CHANGE(target, where, aegis_int_plus(PyList_GET_ITEM(target, where), delta))

    /* The ring slot (aggregates._fold). */
    PyObject *low = PyList_GET_ITEM(slot, R_MIN), *high = PyList_GET_ITEM(slot, R_MAX);
    PyObject *sum = PyList_GET_ITEM(slot, R_DURATION_SUM);
    if (!PyFloat_CheckExact(low) || !PyFloat_CheckExact(high) || !PyFloat_CheckExact(sum)) {
        goto done;
    }
    INT_CHANGE(slot, R_REQUESTS, 1);
    if (failed) {
        INT_CHANGE(slot, R_ERRORS, 1);
    }
    CHANGE(slot, R_DURATION_SUM, PyFloat_FromDouble(PyFloat_AS_DOUBLE(sum) + duration_ms));
    INT_CHANGE(slot, status_index, 1);
    INT_CHANGE(slot, R_HIST_BASE + bucket, 1);
    if (duration_ms < PyFloat_AS_DOUBLE(low)) {
        CHANGE(slot, R_MIN, PyFloat_FromDouble(duration_ms));
    }
    if (duration_ms > PyFloat_AS_DOUBLE(high)) {
        CHANGE(slot, R_MAX, PyFloat_FromDouble(duration_ms));
    }
    /* The series (LabeledTotals.fold). */
    INT_CHANGE(series, L_COUNT, 1);
    CHANGE(series, L_DURATION_SUM, number_plus(PyList_GET_ITEM(series, L_DURATION_SUM), seconds));
    INT_CHANGE(series, L_BUCKETS + bisect_left(fold->bounds, fold->bound_count, seconds), 1);
    if (item->has_ttfb) {
        INT_CHANGE(series, L_TTFB_COUNT, 1);
        CHANGE(series, L_TTFB_SUM, number_plus(PyList_GET_ITEM(series, L_TTFB_SUM), ttfb));
        INT_CHANGE(series, ttfb_base + bisect_left(fold->bounds, fold->bound_count, ttfb), 1);
    }
    INT_CHANGE(series, L_REQUEST, request_bytes);
    INT_CHANGE(series, L_RESPONSE, response_bytes);
#undef INT_CHANGE
#undef CHANGE
    new_count = aegis_int_plus(count, 1);
    if (new_count == NULL) {
        goto done;
    }
    /* The steps that can fail and change something, first. */
    if (PyList_Append(fold->good, object) < 0) {
        PyErr_Clear();
        goto done;
    }
    /* An existing key: setting it allocates nothing, so it cannot fail. */
    if (PyDict_SetItem(fold->requests, key3, new_count) < 0) {
        PyErr_Clear();  /* not reached; the item is then the Python code's */
        Py_ssize_t appended = PyList_GET_SIZE(fold->good) - 1;
        PyList_SetSlice(fold->good, appended, appended + 1, NULL);
        goto done;
    }
    for (int change = 0; change < made; change++) {
        PyList_SetItem(changes[change].list, changes[change].position, changes[change].value);
    }
    made = 0;
    ((unsigned long long *)view.buf)[bucket] += 1;
    folded = 1;
done:
    for (int change = 0; change < made; change++) {
        Py_DECREF(changes[change].value);
    }
    Py_XDECREF(new_count);
    PyBuffer_Release(&view);
    /* A failure (no memory) leaves the item, unchanged, to the Python code. */
    PyErr_Clear();
    return folded;
}

/* fold_items(items, start, good, ring, known, requests, bounds,
 *            (low_ms, scale, shift, last)) -> the index of the first item
 * not folded (len(items) when all were). */
PyObject *
aegis_fold_items(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "fold_items takes 8 arguments");
        return NULL;
    }
    PyObject *items = args[0], *bounds = args[6], *constants = args[7];
    Fold fold = {.good = args[2], .ring = args[3], .known = args[4], .requests = args[5]};
    Py_ssize_t index = PyLong_AsSsize_t(args[1]);
    if (index == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (index < 0) {
        PyErr_SetString(PyExc_ValueError, "fold_items: a negative index");
        return NULL;
    }
    if (!PyList_CheckExact(items) || !PyList_CheckExact(fold.good)
        || !PyList_CheckExact(fold.ring) || PyList_GET_SIZE(fold.ring) != RING_MASK + 1
        || !PyDict_CheckExact(fold.known) || !PyDict_CheckExact(fold.requests)
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
    return PyLong_FromSsize_t(index);
}
