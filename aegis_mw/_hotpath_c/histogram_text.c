/* The rollups' stored histograms as text, compiled (aegis_mw/core/rollup.py):
 * encode_histogram/encode_histogram_array (a {index: count} dict as dense text,
 * "[first,count,...]" or PostgreSQL's "{first,count,...}") and
 * merge_histogram_text (two stored texts added, the SQLite upsert's function
 * on conflict). A rollup write encodes every cell's histogram and merges most
 * of them with the row already stored (the minute, five-minute and hour rows
 * are met again by every write): tens of microseconds a row in Python, about
 * half of the write.
 *
 * Only the shapes these functions write themselves are taken: exact int keys
 * and counts within 64 bits, and text in the canonical form (no spaces, no
 * leading zeros, no "-0", integers within 64 bits), whose sums stay within
 * 64 bits. For anything else each returns None and the caller runs the Python
 * function, which stays the reference: for what is taken, both give the same
 * text, character for character. */
#include "hotpath.h"

#include <limits.h>
#include <stdint.h>
#include <string.h>

/* Slots a histogram may span here (the bucket layout has under 500); a wider
 * one (a corrupted row, a future layout) is Python's. */
#define SPAN_LIMIT 65536
/* The longest decimal text of a long long, with its sign. */
#define DIGITS_MAX 20

/* Append `value` in decimal at `out`; returns the characters written. */
static Py_ssize_t
put_integer(char *out, long long value)
{
    char digits[DIGITS_MAX + 1];
    int count = 0;
    unsigned long long magnitude =
        value < 0 ? 0ULL - (unsigned long long)value : (unsigned long long)value;
    do {
        digits[count++] = (char)('0' + (int)(magnitude % 10));
        magnitude /= 10;
    } while (magnitude != 0);
    Py_ssize_t written = 0;
    if (value < 0) {
        out[written++] = '-';
    }
    while (count > 0) {
        out[written++] = digits[--count];
    }
    return written;
}

/* `values` (first index, then the counts) as text between `open` and
 * `close`, or NULL with an error set. */
static PyObject *
dense_text(const long long *values, Py_ssize_t count, char open, char close)
{
    Py_ssize_t room = 2 + count * (DIGITS_MAX + 1);
    char *text = PyMem_Malloc((size_t)room);
    if (text == NULL) {
        return PyErr_NoMemory();
    }
    Py_ssize_t length = 0;
    text[length++] = open;
    for (Py_ssize_t i = 0; i < count; i++) {
        if (i > 0) {
            text[length++] = ',';
        }
        length += put_integer(text + length, values[i]);
    }
    text[length++] = close;
    PyObject *result = PyUnicode_DecodeASCII(text, length, NULL);
    PyMem_Free(text);
    return result;
}

/* A long long from an exact int; 0 when it is not one or does not fit. */
static int
exact_long_long(PyObject *object, long long *out)
{
    if (!PyLong_CheckExact(object)) {
        return 0;
    }
    int overflow;
    *out = PyLong_AsLongLongAndOverflow(object, &overflow);
    if (overflow != 0 || (*out == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

/* histogram_text(counts: dict, array: bool) -> str | None
 *
 * rollup.dense(counts) as encode_histogram writes it ("[...]"), or as
 * encode_histogram_array does with `array` ("{...}"); None when `counts` is
 * not an exact dict (a subclass may read its items otherwise), a key or a
 * count is not an exact int within 64 bits, or the indexes span too much. */
PyObject *
aegis_histogram_text(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "histogram_text(counts: dict, array: bool)");
        return NULL;
    }
    if (!PyDict_CheckExact(args[0])) {
        Py_RETURN_NONE;
    }
    int array = PyObject_IsTrue(args[1]);
    if (array < 0) {
        return NULL;
    }
    char open = array ? '{' : '[', close = array ? '}' : ']';
    PyObject *counts = args[0];
    if (PyDict_GET_SIZE(counts) == 0) {
        return dense_text(NULL, 0, open, close);
    }
    /* First pass: the lowest and highest index, and that every entry fits. */
    long long low = LLONG_MAX, high = LLONG_MIN;
    Py_ssize_t position = 0;
    PyObject *key, *value;
    while (PyDict_Next(counts, &position, &key, &value)) {
        long long index, count;
        if (!exact_long_long(key, &index) || !exact_long_long(value, &count)) {
            Py_RETURN_NONE;
        }
        low = index < low ? index : low;
        high = index > high ? index : high;
    }
    if (low < LLONG_MIN / 2 || high > LLONG_MAX / 2 || high - low >= SPAN_LIMIT) {
        Py_RETURN_NONE;
    }
    /* [first, count at first, ..., count at high]: max - first + 2 long, as
     * dense() makes it. */
    Py_ssize_t size = (Py_ssize_t)(high - low) + 2;
    long long *values = PyMem_Calloc((size_t)size, sizeof(long long));
    if (values == NULL) {
        return PyErr_NoMemory();
    }
    values[0] = low;
    position = 0;
    while (PyDict_Next(counts, &position, &key, &value)) {
        long long index, count;
        /* Checked above; the dict cannot change while the GIL is held here. */
        exact_long_long(key, &index);
        exact_long_long(value, &count);
        values[index - low + 1] = count;
    }
    PyObject *result = dense_text(values, size, open, close);
    PyMem_Free(values);
    return result;
}

/* Parse canonical dense text ("[]" or "[n,n,...]") into a new array; returns
 * its length, 0 for empty text or "[]", or -1 when the text is not canonical
 * (the Python function decides). */
static Py_ssize_t
parse_dense(const char *text, Py_ssize_t length, long long **out)
{
    *out = NULL;
    if (length == 0) {
        return 0;
    }
    if (length < 2 || text[0] != '[' || text[length - 1] != ']') {
        return -1;
    }
    if (length == 2) {
        return 0;
    }
    /* At most one value per two characters ("1,"), so this bounds the count. */
    Py_ssize_t capacity = length / 2;
    if (capacity > SPAN_LIMIT + 1) {
        return -1;
    }
    long long *values = PyMem_Malloc(sizeof(long long) * (size_t)capacity);
    if (values == NULL) {
        return -1;
    }
    Py_ssize_t count = 0, at = 1, end = length - 1;
    while (at < end) {
        int negative = 0;
        if (text[at] == '-') {
            negative = 1;
            at++;
        }
        Py_ssize_t digits_start = at;
        unsigned long long magnitude = 0;
        while (at < end && text[at] >= '0' && text[at] <= '9') {
            unsigned digit = (unsigned)(text[at] - '0');
            if (magnitude > (ULLONG_MAX - digit) / 10) {
                goto odd;
            }
            magnitude = magnitude * 10 + digit;
            at++;
        }
        Py_ssize_t digits = at - digits_start;
        /* No digits, a leading zero ("01"), or "-0": not what Python writes. */
        if (digits == 0 || digits > DIGITS_MAX || (digits > 1 && text[digits_start] == '0')
            || (negative && magnitude == 0)) {
            goto odd;
        }
        if (negative ? magnitude > (unsigned long long)LLONG_MAX + 1ULL
                     : magnitude > (unsigned long long)LLONG_MAX) {
            goto odd;
        }
        if (count >= capacity) {
            goto odd;
        }
        values[count++] = negative ? (long long)(0ULL - magnitude) : (long long)magnitude;
        if (at < end) {
            if (text[at] != ',' || at + 1 >= end) {
                goto odd;
            }
            at++;
        }
    }
    *out = values;
    return count;

odd:
    PyMem_Free(values);
    return -1;
}

/* The UTF-8 of a str argument, NULL for None (empty); -1: neither. */
static int
text_argument(PyObject *object, const char **text, Py_ssize_t *length)
{
    if (object == Py_None) {
        *text = NULL;
        *length = 0;
        return 0;
    }
    if (!PyUnicode_CheckExact(object) || !PyUnicode_IS_COMPACT_ASCII(object)) {
        return -1;
    }
    *text = (const char *)PyUnicode_1BYTE_DATA(object);
    *length = PyUnicode_GET_LENGTH(object);
    return 0;
}

/* histogram_merge_text(left, right) -> str | None
 *
 * merge_histogram_text(left, right): two stored histograms (text or None)
 * added, as dense text; None when either is not in the form taken here (the
 * version 2 dict form, spaces, an integer past 64 bits, a sum past them). */
PyObject *
aegis_histogram_merge_text(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "histogram_merge_text(left, right)");
        return NULL;
    }
    const char *texts[2];
    Py_ssize_t lengths[2];
    if (text_argument(args[0], &texts[0], &lengths[0]) < 0
        || text_argument(args[1], &texts[1], &lengths[1]) < 0) {
        Py_RETURN_NONE;
    }
    long long *parts[2] = {NULL, NULL};
    Py_ssize_t counts[2];
    PyObject *result = NULL;
    for (int i = 0; i < 2; i++) {
        counts[i] = parse_dense(texts[i], lengths[i], &parts[i]);
        if (counts[i] < 0) {
            goto python;
        }
    }
    /* merge_dense: an empty side gives the other as it is. */
    if (counts[0] == 0 || counts[1] == 0) {
        int side = counts[0] == 0 ? 1 : 0;
        result = dense_text(parts[side], counts[side], '[', ']');
        goto done;
    }
    long long first = parts[0][0] < parts[1][0] ? parts[0][0] : parts[1][0];
    long long last = 0; /* max(part[0] + len(part)) over both */
    for (int i = 0; i < 2; i++) {
        /* Within a quarter of the range each, so last - first cannot overflow. */
        if (parts[i][0] < LLONG_MIN / 4 || parts[i][0] > LLONG_MAX / 4) {
            goto python;
        }
        long long end = parts[i][0] + (long long)counts[i];
        last = i == 0 || end > last ? end : last;
    }
    /* Python's list is max(...) - first - 1 counts long, after the index. */
    long long slots = last - first - 1;
    if (slots < 0 || slots > SPAN_LIMIT) {
        goto python;
    }
    long long *merged = PyMem_Calloc((size_t)slots + 1, sizeof(long long));
    if (merged == NULL) {
        result = PyErr_NoMemory();
        goto done;
    }
    merged[0] = first;
    for (int i = 0; i < 2; i++) {
        long long offset = parts[i][0] - first;
        for (Py_ssize_t j = 1; j < counts[i]; j++) {
            long long *slot = &merged[1 + offset + (j - 1)];
            long long add = parts[i][j];
            if ((add > 0 && *slot > LLONG_MAX - add) || (add < 0 && *slot < LLONG_MIN - add)) {
                PyMem_Free(merged);
                goto python;
            }
            *slot += add;
        }
    }
    result = dense_text(merged, (Py_ssize_t)slots + 1, '[', ']');
    PyMem_Free(merged);
    goto done;

python:
    result = Py_NewRef(Py_None);
done:
    PyMem_Free(parts[0]);
    PyMem_Free(parts[1]);
    return result;
}
