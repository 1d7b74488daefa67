/* What the WSGI and the Django path read from a WSGI environ (an exact dict):
 * the client address and the numbers servers put there as text. */
#include "hotpath.h"

/* A string's truth, the usual case without a call. */
int
aegis_truthy(PyObject *value)
{
    if (value == NULL || value == Py_None) {
        return 0;
    }
    if (PyUnicode_CheckExact(value)) {
        return PyUnicode_GET_LENGTH(value) > 0;
    }
    return PyObject_IsTrue(value);
}

/* A number in the environ (REMOTE_PORT, CONTENT_LENGTH) as the Python paths read
 * it: an int, 0 when absent, empty or not a number. New reference. */
PyObject *
aegis_number_or_zero(PyObject *value)
{
    int present = aegis_truthy(value);
    if (present < 0) {
        /* The Python paths ask the truth inside their try: a ValueError or
         * TypeError from it is "not a number" (0) there, not the request's error. */
        goto not_a_number;
    }
    if (present == 0) {
        return PyLong_FromLong(0);
    }
    if (PyUnicode_CheckExact(value) && PyUnicode_IS_ASCII(value)) {
        Py_ssize_t length = PyUnicode_GET_LENGTH(value);
        const Py_UCS1 *digits = PyUnicode_1BYTE_DATA(value);
        if (length <= 9) {  /* the usual case: only digits, no int() needed */
            long value = 0;
            Py_ssize_t index = 0;
            for (; index < length && digits[index] >= '0' && digits[index] <= '9'; index++) {
                value = value * 10 + (digits[index] - '0');
            }
            if (index == length) {
                return PyLong_FromLong(value);
            }
        }
    }
    PyObject *number = PyNumber_Long(value);
    if (number != NULL) {
        return number;
    }
not_a_number:
    if (PyErr_ExceptionMatches(PyExc_ValueError) || PyErr_ExceptionMatches(PyExc_TypeError)) {
        PyErr_Clear();
        return PyLong_FromLong(0);
    }
    return NULL;
}

/* (REMOTE_ADDR, port), or None without an address. New reference. */
PyObject *
aegis_client_of(PyObject *environ)
{
    /* Held from here: the environ may change under a call below (a __bool__). */
    PyObject *address = Py_XNewRef(PyDict_GetItemWithError(environ, aegis_str.remote_addr));
    if (address == NULL && PyErr_Occurred()) {
        return NULL;
    }
    int present = aegis_truthy(address);
    if (present <= 0) {
        Py_XDECREF(address);
        return present < 0 ? NULL : Py_NewRef(Py_None);
    }
    PyObject *port = Py_XNewRef(PyDict_GetItemWithError(environ, aegis_str.remote_port));
    PyObject *number = PyErr_Occurred() ? NULL : aegis_number_or_zero(port);
    Py_XDECREF(port);
    PyObject *client = number != NULL ? PyTuple_Pack(2, address, number) : NULL;
    Py_DECREF(address);
    Py_XDECREF(number);
    return client;
}

/* method == "HEAD", as the Python paths compare it: 1, 0, or -1 on an error. */
int
aegis_is_head(PyObject *method)
{
    if (PyUnicode_CheckExact(method)) {
        return PyUnicode_GET_LENGTH(method) == 4 && PyUnicode_IS_ASCII(method)
            && memcmp(PyUnicode_1BYTE_DATA(method), "HEAD", 4) == 0;
    }
    return PyObject_RichCompareBool(method, aegis_str.method_head, Py_EQ);
}
