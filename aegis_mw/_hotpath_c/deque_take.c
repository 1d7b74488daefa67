/* Many items off the left end of a collections.deque in one call: the
 * pipeline moves every record through two deques (the inbox, then each sink's
 * backlog), and a Python loop of popleft() calls, or of type checks over a
 * batch, costs a few hundred instructions a record where these loops cost a
 * few tens. aegis_mw.core.deque_take holds the Python versions: the reference
 * and the fallback.
 *
 *   take_left(queue, count)        -> the first min(count, len) items, removed
 *   split_left(queue, count, kind) -> (those of type kind, the others) among
 *                                     the first min(count, len), left in place
 *
 * Each popleft() is the deque's own method, called as Python calls it. The
 * GIL is held throughout and no Python code runs, so each call is atomic
 * towards the request threads that append at the right end. */
#include "hotpath.h"

static int
check_queue(PyObject *queue, const char *name)
{
    /* The exact type: a subclass may override popleft() or iteration. */
    if (strcmp(Py_TYPE(queue)->tp_name, "collections.deque") != 0) {
        PyErr_Format(PyExc_TypeError, "%s: a collections.deque is required", name);
        return -1;
    }
    return 0;
}

/* min(count, len(queue)), or -1 with an error set. */
static Py_ssize_t
taken_count(PyObject *queue, PyObject *count_object, const char *name)
{
    if (check_queue(queue, name) < 0) {
        return -1;
    }
    Py_ssize_t count = PyLong_AsSsize_t(count_object);
    if (count == -1 && PyErr_Occurred()) {
        return -1;
    }
    Py_ssize_t size = PyObject_Size(queue);
    if (size < 0) {
        return -1;
    }
    return count < 0 ? 0 : (count < size ? count : size);
}

PyObject *
aegis_take_left(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "take_left(queue, count)");
        return NULL;
    }
    Py_ssize_t count = taken_count(args[0], args[1], "take_left");
    PyObject *pop = count < 0 ? NULL : PyObject_GetAttr(args[0], aegis_str.popleft);
    if (pop == NULL) {
        return NULL;
    }
    /* Allocated before anything is taken: past this point nothing fails. */
    PyObject *taken = PyList_New(count);
    if (taken == NULL) {
        Py_DECREF(pop);
        return NULL;
    }
    for (Py_ssize_t index = 0; index < count; index++) {
        /* Cannot fail: the deque holds at least count items, and nothing
         * here runs Python code that could take any. */
        PyObject *item = PyObject_CallNoArgs(pop);
        if (item == NULL) {
            Py_DECREF(pop);
            Py_DECREF(taken);  /* the items taken before go with it */
            return NULL;
        }
        PyList_SET_ITEM(taken, index, item);
    }
    Py_DECREF(pop);
    return taken;
}

PyObject *
aegis_split_left(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyType_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "split_left(queue, count, kind: type)");
        return NULL;
    }
    Py_ssize_t count = taken_count(args[0], args[1], "split_left");
    if (count < 0) {
        return NULL;
    }
    PyTypeObject *kind = (PyTypeObject *)args[2];
    PyObject *matching = PyList_New(0), *others = PyList_New(0), *result = NULL;
    PyObject *iterator = matching && others ? PyObject_GetIter(args[0]) : NULL;
    if (iterator == NULL) {
        goto done;
    }
    /* Nothing here runs Python code, so the deque cannot change under the
     * iterator (which would raise if it did). */
    for (Py_ssize_t index = 0; index < count; index++) {
        PyObject *item = PyIter_Next(iterator);
        if (item == NULL) {
            if (!PyErr_Occurred()) {
                PyErr_SetString(PyExc_RuntimeError, "split_left: the deque shrank");
            }
            goto done;
        }
        int appended = PyList_Append(Py_TYPE(item) == kind ? matching : others, item);
        Py_DECREF(item);
        if (appended < 0) {
            goto done;
        }
    }
    result = PyTuple_Pack(2, matching, others);
done:
    Py_XDECREF(iterator);
    Py_XDECREF(matching);
    Py_XDECREF(others);
    return result;
}
