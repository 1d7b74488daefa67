/* column_range(records, column, start, stop): the smallest and largest value
 * of one column over records[start:stop], as Python's min() and max() find
 * them (aegis_mw.sinks.sqlite_blocks, a block's time range).
 *
 * The SQLite sink reads each write's timestamps for the blocks of its time
 * index; in Python that is a third of the index's cost. Handled here only
 * when every record is a tuple (RequestRecord) long enough and every value an
 * exact float; otherwise None, and the caller's min() and max() decide. The
 * loops are min()'s and max()'s: the first value is kept until one compares
 * below (above) it, so NaN and signed zeros come out as they do in Python. */
#include "hotpath.h"

PyObject *
aegis_column_range(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "column_range(records: list, column, start, stop)");
        return NULL;
    }
    PyObject *records = args[0];
    Py_ssize_t column = PyLong_AsSsize_t(args[1]);
    Py_ssize_t start = column == -1 && PyErr_Occurred() ? -1 : PyLong_AsSsize_t(args[2]);
    Py_ssize_t stop = start == -1 && PyErr_Occurred() ? -1 : PyLong_AsSsize_t(args[3]);
    if (stop == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (column < 0 || start < 0 || stop <= start || stop > PyList_GET_SIZE(records)) {
        PyErr_SetString(PyExc_ValueError, "column_range: bad column or bounds");
        return NULL;
    }
    PyObject *low = NULL, *high = NULL;
    double low_value = 0.0, high_value = 0.0;
    /* Nothing in the loop runs Python code: the list cannot change under it. */
    for (Py_ssize_t index = start; index < stop; index++) {
        PyObject *record = PyList_GET_ITEM(records, index);
        if (!PyTuple_Check(record) || PyTuple_GET_SIZE(record) <= column) {
            Py_RETURN_NONE;
        }
        PyObject *value = PyTuple_GET_ITEM(record, column);
        if (!PyFloat_CheckExact(value)) {
            Py_RETURN_NONE;
        }
        double number = PyFloat_AS_DOUBLE(value);
        if (low == NULL) {
            low = high = value;
            low_value = high_value = number;
            continue;
        }
        if (number < low_value) {
            low = value;
            low_value = number;
        }
        if (number > high_value) {
            high = value;
            high_value = number;
        }
    }
    return PyTuple_Pack(2, low, high);
}
