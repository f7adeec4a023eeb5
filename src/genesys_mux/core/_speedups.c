/*
 * The hot loops of the pipeline, compiled: the participant walk of
 * genesys_mux.core.snapshot, the notification split of
 * genesys_mux.core.frames, and the read of a snapshot's facts straight from
 * its bytes (the last two at the end of this file).
 *
 * snapshot._walk (Python) is the walk's specification: walk() here must
 * return a value equal to it for every input, and tests/core/test_speedups.py
 * holds the two to that. The state digest's encoder stays in Python, and the
 * walk calls it (bind_digest()) for the values it does not write itself; the
 * digest's SHA-256 is computed here with the CPU's SHA instructions where it
 * has them, and by the bound hash (hashlib's) where it has not. read() does
 * the typed decode's work and the walk's in one pass, for the bodies it is
 * sure of (see "the snapshot read"); the others are decoded in Python and
 * walked here.
 *
 * Why it exists: the walk reads some thirty fields of each participant and
 * communication, and the state digest covers most of them. In the
 * interpreter that was about a third of the pipeline's CPU per event; here
 * it is a few hundred nanoseconds, and the digest's JSON is written as the
 * fields are read rather than built as tuples for the encoder to walk
 * again. mypyc was measured first and gained 3 %, because it reads a
 * msgspec struct's fields through generic attribute lookup.
 *
 * How it reads fields: bind() is given the snapshot's private msgspec struct
 * types and looks up each field's member descriptor once, keeping its slot
 * offset. walk() then reads a field as the interpreter's own slot access
 * does, straight from the object, but only from an object whose type is
 * exactly the bound one. Anything else (a list that is not exactly a list,
 * an object of another type) makes walk() return None, and the caller walks
 * in Python: an unexpected shape costs speed, never correctness.
 *
 * References: every field read is borrowed from the conversation tree the
 * caller holds for the whole call, and nothing here runs Python code that
 * could change that tree (comparisons are of str, datetime and tuples of
 * str; sorting is of tuples of str and of exact str ids; the encoder and the
 * hash are msgspec's and OpenSSL's C, with no hooks).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <datetime.h>
#include <stdint.h>
#include <string.h>

/* SHA-256 with the CPU's SHA instructions (see "the state digest's hash"):
 * x86-64 with GCC 5 or later or Clang, which compile the intrinsics per
 * function. Not clang-cl: its headers declare them only when the whole file
 * is compiled for SHA, and a build failure here would cost the whole
 * (optional) extension, not just this. */
#if defined(__x86_64__) && !defined(_MSC_VER) && \
    (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 5))
#define SHA_INSTRUCTIONS_BUILT 1
#include <cpuid.h>
#include <immintrin.h>
#endif

#ifdef __SSE2__
#include <emmintrin.h>
#endif

#ifndef Py_T_OBJECT_EX
#define Py_T_OBJECT_EX T_OBJECT_EX
#endif
#ifndef Py_T_OBJECT
#define Py_T_OBJECT T_OBJECT
#endif

/* Whether a METH_FASTCALL function was given its `count` arguments; if
 * not, a TypeError saying so is set. */
static int
takes(const char *name, Py_ssize_t count, Py_ssize_t nargs)
{
    if (nargs == count) {
        return 1;
    }
    PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments (%zd given)", name, count, nargs);
    return 0;
}

/* -- the bound layout ---------------------------------------------------- */

enum {
    P_ID, P_PURPOSE, P_USER_ID, P_QUEUE_ID, P_USER, P_QUEUE,
    /* a media participant's own communication state, in _communication_state's order */
    P_STATE, P_HELD, P_START_HOLD_TIME, P_DISCONNECT_TYPE, P_TYPE, P_MUTED,
    P_RECORDING, P_RECORDING_STATE,
    P_ATTRIBUTES, P_MONITORED_PARTICIPANT_ID,
    P_CONNECTED_TIME, P_END_TIME, P_START_ACW_TIME, P_END_ACW_TIME, P_WRAPUP,
    /* the nine media lists, in the order snapshot._walk visits them */
    P_CALLS, P_CALLBACKS, P_CHATS, P_EMAILS, P_MESSAGES, P_VIDEOS,
    P_COBROWSESESSIONS, P_SCREENSHARES, P_SOCIAL_EXPRESSIONS,
    P_CALLBACK_SCHEDULED_TIME,
    P_COUNT
};
static const char *const participant_fields[P_COUNT] = {
    "id", "purpose", "user_id", "queue_id", "user", "queue",
    "state", "held", "start_hold_time", "disconnect_type", "type", "muted",
    "recording", "recording_state",
    "attributes", "monitored_participant_id",
    "connected_time", "end_time", "start_acw_time", "end_acw_time", "wrapup",
    "calls", "callbacks", "chats", "emails", "messages", "videos",
    "cobrowsesessions", "screenshares", "social_expressions",
    "callback_scheduled_time",
};
#define MEDIA_LISTS 9

enum {
    C_STATE, C_HELD, C_START_HOLD_TIME, C_DISCONNECT_TYPE, C_TYPE, C_MUTED,
    C_RECORDING, C_RECORDING_STATE,
    C_MESSAGES, C_MESSAGE_ID, C_MESSAGE, C_MESSAGE_STATUS,
    C_CONNECTED_TIME, C_DISCONNECTED_TIME, C_AFTER_CALL_WORK, C_WRAPUP,
    C_CALLBACK_SCHEDULED_TIME,
    C_COUNT
};
static const char *const communication_fields[C_COUNT] = {
    "state", "held", "start_hold_time", "disconnect_type", "type", "muted",
    "recording", "recording_state",
    "messages", "message_id", "message", "message_status",
    "connected_time", "disconnected_time", "after_call_work", "wrapup",
    "callback_scheduled_time",
};
/* How many fields, from the first, make a communication's digest state. */
#define STATE_FIELDS 8

enum { D_MESSAGE_ID, D_MESSAGE, D_MESSAGE_STATUS, D_COUNT };
static const char *const detail_fields[D_COUNT] = {"message_id", "message", "message_status"};

enum { R_ID, R_COUNT };
static const char *const ref_fields[R_COUNT] = {"id"};

enum { W_CODE, W_END_TIME, W_COUNT };
static const char *const wrapup_fields[W_COUNT] = {"code", "end_time"};

enum { A_START_TIME, A_END_TIME, A_COUNT };
static const char *const after_call_work_fields[A_COUNT] = {"start_time", "end_time"};

typedef struct {
    PyTypeObject *type;
    Py_ssize_t offsets[P_COUNT]; /* the largest field count of any bound type */
} Layout;

static Layout participant, communication, detail, ref, wrapup, after_call_work;
static PyObject *media_names[MEDIA_LISTS];
static PyObject *str_connected, *str_acd, *str_agent, *str_user, *str_empty, *str_timestamp;
static int bound = 0;

/* A field of an object of exactly the layout's type, borrowed. An empty slot
 * (a field deleted, which nothing in the package does) reads as None. */
static inline PyObject *
field(PyObject *obj, const Layout *layout, int index)
{
    PyObject *value = *(PyObject **)((char *)obj + layout->offsets[index]);
    return value != NULL ? value : Py_None;
}

static int
bind_layout(Layout *layout, PyObject *type, const char *const *names, int count)
{
    if (!PyType_Check(type)) {
        PyErr_Format(PyExc_TypeError, "bind() expects struct types, got %R", type);
        return -1;
    }
    for (int i = 0; i < count; i++) {
        PyObject *descr = PyObject_GetAttrString(type, names[i]);
        if (descr == NULL) {
            return -1;
        }
        if (!Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
            PyErr_Format(PyExc_TypeError, "%R.%s is not a slot (%R): the struct layout changed",
                         type, names[i], Py_TYPE(descr));
            Py_DECREF(descr);
            return -1;
        }
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        int kind = member->type;
        Py_ssize_t offset = member->offset;
        Py_DECREF(descr);
        if (kind != Py_T_OBJECT_EX && kind != Py_T_OBJECT) {
            PyErr_Format(PyExc_TypeError, "%R.%s is not an object slot: the struct layout changed",
                         type, names[i]);
            return -1;
        }
        layout->offsets[i] = offset;
    }
    layout->type = (PyTypeObject *)Py_NewRef(type);
    return 0;
}

/* -- the walk --------------------------------------------------------------- */

/* Sentinel result of the helpers below: the input is not of the bound shape. */
#define UNEXPECTED 1

/* -- the state digest's JSON --------------------------------------------------
 *
 * snapshot._state_digest hashes the msgspec JSON of (conversation id,
 * version, the participants' digest parts sorted by id). Building those
 * parts as tuples for the encoder to walk again cost more than the walk
 * itself, so the walk here writes their JSON as it goes, in the bytes the
 * encoder writes: brackets, commas, null, true, false and plain ASCII text
 * are written here; every other value (the version, a hold time, text with
 * an escape or beyond ASCII, anything unforeseen) is handed to the bound
 * encoder itself, so its bytes are the encoder's by construction.
 */

typedef struct {
    char *data;
    Py_ssize_t size, capacity;
} Buffer;

static int
buffer_reserve(Buffer *b, Py_ssize_t extra)
{
    if (b->size + extra <= b->capacity) {
        return 0;
    }
    Py_ssize_t capacity = b->capacity ? b->capacity : 1024;
    while (capacity < b->size + extra) {
        if (capacity > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        capacity *= 2;
    }
    char *data = PyMem_Realloc(b->data, (size_t)capacity);
    if (data == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->data = data;
    b->capacity = capacity;
    return 0;
}

static int
buffer_write(Buffer *b, const char *s, Py_ssize_t n)
{
    if (buffer_reserve(b, n) < 0) {
        return -1;
    }
    memcpy(b->data + b->size, s, (size_t)n);
    b->size += n;
    return 0;
}

static inline int
buffer_char(Buffer *b, char c)
{
    if (b->size == b->capacity && buffer_reserve(b, 1) < 0) {
        return -1;
    }
    b->data[b->size++] = c;
    return 0;
}

static PyObject *encode_value; /* snapshot._encode_state, or NULL before bind_digest() */
static PyObject *sha256;       /* hashlib.sha256 */
static PyObject *str_digest;
/* snapshot._state_digest keeps the first 16 bytes of the SHA-256. */
#define DIGEST_SIZE 16

/* One value, as the encoder writes it. */
static int
write_value(Buffer *b, PyObject *v)
{
    if (v == Py_None) {
        return buffer_write(b, "null", 4);
    }
    if (v == Py_True) {
        return buffer_write(b, "true", 4);
    }
    if (v == Py_False) {
        return buffer_write(b, "false", 5);
    }
    if (PyUnicode_CheckExact(v) && PyUnicode_IS_ASCII(v)) {
        Py_ssize_t n = PyUnicode_GET_LENGTH(v);
        const unsigned char *text = PyUnicode_1BYTE_DATA(v);
        Py_ssize_t i = 0;
        while (i < n && text[i] >= 0x20 && text[i] < 0x7f && text[i] != '"' && text[i] != '\\') {
            i++;
        }
        if (i == n) {
            if (buffer_reserve(b, n + 2) < 0) {
                return -1;
            }
            b->data[b->size++] = '"';
            memcpy(b->data + b->size, text, (size_t)n);
            b->size += n;
            b->data[b->size++] = '"';
            return 0;
        }
    }
    PyObject *encoded = PyObject_CallOneArg(encode_value, v);
    if (encoded == NULL) {
        return -1;
    }
    int status;
    if (!PyBytes_CheckExact(encoded)) {
        PyErr_SetString(PyExc_TypeError, "the bound encoder did not return bytes");
        status = -1;
    }
    else {
        status = buffer_write(b, PyBytes_AS_STRING(encoded), PyBytes_GET_SIZE(encoded));
    }
    Py_DECREF(encoded);
    return status;
}

/* A string's bytes inside a body, without its quotes (the read's). */
typedef struct {
    const char *p;
    Py_ssize_t n;
} Span;

/* A participant's digest part in Parts.json, and the id it is sorted by:
 * an exact str, borrowed (the walk's), or its bytes (the read's). */
typedef struct {
    PyObject *id;
    Span span;
    Py_ssize_t start, length, index;
} Part;

/* A snapshot's digest parts: their JSON one after another, and where each is. */
typedef struct {
    Buffer json;
    Part *index;
    Py_ssize_t count, capacity;
} Parts;

/* A part begun at the end of the JSON, to be written there and ended with
 * parts_end(); NULL when out of memory. */
static Part *
parts_begin(Parts *parts)
{
    if (parts->count == parts->capacity) {
        Py_ssize_t capacity = parts->capacity ? 2 * parts->capacity : 8;
        Part *index = PyMem_Realloc(parts->index, (size_t)capacity * sizeof(Part));
        if (index == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        parts->index = index;
        parts->capacity = capacity;
    }
    Part *part = &parts->index[parts->count];
    *part = (Part){NULL, {"", 0}, parts->json.size, 0, parts->count};
    return part;
}

/* End the part begun last with its communications' JSON: ,[comms]]. */
static int
parts_end(Parts *parts, const Buffer *comms)
{
    Buffer *b = &parts->json;
    if (buffer_write(b, ",[", 2) < 0 || buffer_write(b, comms->data, comms->size) < 0 ||
        buffer_write(b, "]]", 2) < 0) {
        return -1;
    }
    Part *part = &parts->index[parts->count++];
    part->length = b->size - part->start;
    return 0;
}

static void
parts_free(Parts *parts)
{
    PyMem_Free(parts->json.data);
    PyMem_Free(parts->index);
}

/* Everything the walk gathers (snapshot._walk's locals). */
typedef struct {
    PyObject *states;        /* dict[str, list[str]], tuples once done */
    PyObject *newest;        /* borrowed datetime or NULL */
    PyObject *message_types; /* frozenset[str], filled while only the walk holds it */
    PyObject *queue_ids;     /* frozenset[str], likewise */
    PyObject *user_ids;      /* frozenset[str], likewise */
    Buffer comms;            /* the current participant's communications' JSON */
    Py_ssize_t comm_count;
    Parts parts;
} Walk;

/* Keep the newest of the stamps seen, as max() does: a later one replaces
 * it only when strictly greater. */
static int
add_stamp(Walk *w, PyObject *stamp)
{
    if (stamp == Py_None) {
        return 0;
    }
    if (w->newest == NULL) {
        w->newest = stamp;
        return 0;
    }
    int greater = PyObject_RichCompareBool(stamp, w->newest, Py_GT);
    if (greater < 0) {
        return -1;
    }
    if (greater) {
        w->newest = stamp;
    }
    return 0;
}

/* The stamps of an optional part (a wrapup, after-call work): fields first
 * to last of its layout, inclusive. 0, -1 on error, UNEXPECTED when the
 * part is neither None nor of the layout's type. */
static int
part_stamps(Walk *w, PyObject *part, const Layout *layout, int first, int last)
{
    if (part == Py_None) {
        return 0;
    }
    if (!Py_IS_TYPE(part, layout->type)) {
        return UNEXPECTED;
    }
    for (int i = first; i <= last; i++) {
        if (add_stamp(w, field(part, layout, i)) < 0) {
            return -1;
        }
    }
    return 0;
}

/* The list of states of one media name in w->states, created when missing;
 * borrowed. */
static PyObject *
bucket_of(Walk *w, PyObject *name)
{
    PyObject *bucket = PyDict_GetItemWithError(w->states, name);
    if (bucket != NULL || PyErr_Occurred()) {
        return bucket;
    }
    bucket = PyList_New(0);
    if (bucket == NULL) {
        return NULL;
    }
    int failed = PyDict_SetItem(w->states, name, bucket);
    Py_DECREF(bucket);
    return failed ? NULL : bucket;
}

/* snapshot._details: each message's id (messageId, else message.id) and
 * status, as [[id, status], ...]. */
static int
write_details(Buffer *b, PyObject *items)
{
    if (!PyList_CheckExact(items)) {
        return UNEXPECTED;
    }
    if (buffer_char(b, '[') < 0) {
        return -1;
    }
    int first = 1;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *d = PyList_GET_ITEM(items, i);
        if (d == Py_None) {
            continue;
        }
        const Layout *layout;
        int message_id, message, message_status;
        if (Py_IS_TYPE(d, detail.type)) {
            layout = &detail;
            message_id = D_MESSAGE_ID, message = D_MESSAGE, message_status = D_MESSAGE_STATUS;
        }
        else if (Py_IS_TYPE(d, communication.type)) {
            layout = &communication;
            message_id = C_MESSAGE_ID, message = C_MESSAGE, message_status = C_MESSAGE_STATUS;
        }
        else {
            return UNEXPECTED;
        }
        PyObject *id = field(d, layout, message_id);
        int truthy = PyObject_IsTrue(id);
        if (truthy < 0) {
            return -1;
        }
        if (!truthy) {
            PyObject *ref_object = field(d, layout, message);
            if (ref_object == Py_None) {
                id = Py_None;
            }
            else if (Py_IS_TYPE(ref_object, ref.type)) {
                id = field(ref_object, &ref, R_ID);
            }
            else {
                return UNEXPECTED;
            }
        }
        if ((!first && buffer_char(b, ',') < 0) || buffer_char(b, '[') < 0 ||
            write_value(b, id) < 0 || buffer_char(b, ',') < 0 ||
            write_value(b, field(d, layout, message_status)) < 0 || buffer_char(b, ']') < 0) {
            return -1;
        }
        first = 0;
    }
    return buffer_char(b, ']');
}

/* One digest entry, [media, [its STATE_FIELDS state fields], details or
 * null], appended to the participant's communications. */
static int
add_comm(Walk *w, PyObject *name, PyObject *obj, const Layout *layout, int first,
         PyObject *messages, PyObject *scheduled)
{
    Buffer *b = &w->comms;
    if ((w->comm_count > 0 && buffer_char(b, ',') < 0) || buffer_char(b, '[') < 0 ||
        write_value(b, name) < 0 || buffer_write(b, ",[", 2) < 0) {
        return -1;
    }
    for (int i = 0; i < STATE_FIELDS; i++) {
        if ((i > 0 && buffer_char(b, ',') < 0) || write_value(b, field(obj, layout, first + i)) < 0) {
            return -1;
        }
    }
    if (buffer_write(b, "],", 2) < 0) {
        return -1;
    }
    int truthy = PyObject_IsTrue(messages);
    if (truthy < 0) {
        return -1;
    }
    if (truthy) {
        int status = write_details(b, messages);
        if (status != 0) {
            return status;
        }
    }
    else if (buffer_write(b, "null", 4) < 0) {
        return -1;
    }
    /* A callback's appointment, only where there is one: every other
     * communication's digest stays the bytes it always was. */
    if (scheduled != Py_None && (buffer_char(b, ',') < 0 || write_value(b, scheduled) < 0)) {
        return -1;
    }
    w->comm_count++;
    return buffer_char(b, ']');
}

/* snapshot._communications: one media list; *connected set when one is. */
static int
communications(Walk *w, PyObject *name, PyObject *list, int *connected, int messages_list)
{
    if (!PyList_CheckExact(list)) {
        return UNEXPECTED;
    }
    PyObject *bucket = NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list); i++) {
        PyObject *comm = PyList_GET_ITEM(list, i);
        if (comm == Py_None) {
            continue;
        }
        if (!Py_IS_TYPE(comm, communication.type)) {
            return UNEXPECTED;
        }
        if (bucket == NULL && (bucket = bucket_of(w, name)) == NULL) {
            return -1;
        }
        PyObject *state = field(comm, &communication, C_STATE);
        if (state != Py_None) {
            if (PyList_Append(bucket, state) < 0) {
                return -1;
            }
            int equal = PyObject_RichCompareBool(state, str_connected, Py_EQ);
            if (equal < 0) {
                return -1;
            }
            if (equal) {
                *connected = 1;
            }
        }
        int status = add_comm(w, name, comm, &communication, C_STATE,
                              field(comm, &communication, C_MESSAGES),
                              field(comm, &communication, C_CALLBACK_SCHEDULED_TIME));
        if (status != 0) {
            return status;
        }
        if (add_stamp(w, field(comm, &communication, C_CONNECTED_TIME)) < 0 ||
            add_stamp(w, field(comm, &communication, C_DISCONNECTED_TIME)) < 0) {
            return -1;
        }
        if ((status = part_stamps(w, field(comm, &communication, C_AFTER_CALL_WORK),
                                  &after_call_work, A_START_TIME, A_END_TIME)) != 0 ||
            (status = part_stamps(w, field(comm, &communication, C_WRAPUP), &wrapup,
                                  W_END_TIME, W_END_TIME)) != 0) {
            return status;
        }
        /* A general participant's messages[] gives the message types. */
        if (messages_list) {
            PyObject *type = field(comm, &communication, C_TYPE);
            if (type != Py_None && PySet_Add(w->message_types, type) < 0) {
                return -1;
            }
        }
    }
    return 0;
}

/* The id of a participant's user or queue: the *_id field, else the reference's id. */
static int
id_of(PyObject *p, int id_index, int ref_index, PyObject **out)
{
    PyObject *id = field(p, &participant, id_index);
    if (id == Py_None) {
        PyObject *reference = field(p, &participant, ref_index);
        if (reference != Py_None) {
            if (!Py_IS_TYPE(reference, ref.type)) {
                return UNEXPECTED;
            }
            id = field(reference, &ref, R_ID);
        }
    }
    *out = id;
    return 0;
}

static int
equals(PyObject *value, PyObject *constant)
{
    return PyObject_RichCompareBool(value, constant, Py_EQ);
}

/* sorted(attributes.items()) of a non-empty dict of str: the keys differ,
 * so only they are compared. */
static int
write_attributes(Buffer *b, PyObject *attributes)
{
    PyObject *items = PyDict_Items(attributes);
    if (items == NULL) {
        return -1;
    }
    int failed = PyList_Sort(items) < 0 || buffer_char(b, '[') < 0;
    for (Py_ssize_t i = 0; !failed && i < PyList_GET_SIZE(items); i++) {
        PyObject *pair = PyList_GET_ITEM(items, i);
        failed = (i > 0 && buffer_char(b, ',') < 0) || buffer_char(b, '[') < 0 ||
                 write_value(b, PyTuple_GET_ITEM(pair, 0)) < 0 || buffer_char(b, ',') < 0 ||
                 write_value(b, PyTuple_GET_ITEM(pair, 1)) < 0 || buffer_char(b, ']') < 0;
    }
    Py_DECREF(items);
    return failed || buffer_char(b, ']') < 0 ? -1 : 0;
}

/* A participant's digest part, [id or "", purpose, user id, queue id, wrapup
 * code, sorted attributes or null, [communications]], appended to w->parts
 * and indexed by its id for the sort. */
static int
add_part(Walk *w, PyObject *p, PyObject *purpose, PyObject *user_id, PyObject *queue_id,
         PyObject *participant_wrapup)
{
    PyObject *id = field(p, &participant, P_ID);
    int has_id = PyObject_IsTrue(id);
    if (has_id < 0) {
        return -1;
    }
    if (!has_id) {
        id = str_empty;
    }
    else if (!PyUnicode_CheckExact(id)) {
        /* Sorting by it could run Python code (or fail): Python sorts it. */
        return UNEXPECTED;
    }
    PyObject *attributes = field(p, &participant, P_ATTRIBUTES);
    int truthy = PyObject_IsTrue(attributes);
    if (truthy < 0) {
        return -1;
    }
    if (truthy && !PyDict_CheckExact(attributes)) {
        return UNEXPECTED;
    }
    PyObject *code = Py_None;
    if (participant_wrapup != Py_None) {
        code = field(participant_wrapup, &wrapup, W_CODE);
    }
    Part *part = parts_begin(&w->parts);
    if (part == NULL) {
        return -1;
    }
    part->id = id;
    Buffer *b = &w->parts.json;
    if (buffer_char(b, '[') < 0 || write_value(b, id) < 0 || buffer_char(b, ',') < 0 ||
        write_value(b, purpose) < 0 || buffer_char(b, ',') < 0 || write_value(b, user_id) < 0 ||
        buffer_char(b, ',') < 0 || write_value(b, queue_id) < 0 || buffer_char(b, ',') < 0 ||
        write_value(b, code) < 0 || buffer_char(b, ',') < 0) {
        return -1;
    }
    if (truthy) {
        if (write_attributes(b, attributes) < 0) {
            return -1;
        }
    }
    else if (buffer_write(b, "null", 4) < 0) {
        return -1;
    }
    return parts_end(&w->parts, &w->comms);
}

/* Python's sort of the parts by id: code point order, stable. The ids are
 * exact str, so the comparison cannot fail or run Python code. */
static int
compare_parts(const void *a, const void *b)
{
    const Part *x = a, *y = b;
    if (x->id != y->id) {
        int order = PyUnicode_Compare(x->id, y->id);
        if (order != 0) {
            return order;
        }
    }
    return x->index < y->index ? -1 : x->index > y->index;
}

/* -- the state digest's hash ---------------------------------------------
 *
 * The digest is SHA-256. Through hashlib each one costs a bytes object for
 * the JSON, a hash object (an OpenSSL context, set up and copied for
 * digest()) and a 32-byte result: about 0.7 us per event on a 2.3 KB
 * snapshot, while hashing its ~500 bytes takes about 0.15 us with the
 * SHA instructions most x86-64 CPUs have (SHA-NI). Where the CPU has them,
 * the walk hashes its buffer itself; elsewhere it calls the bound hash
 * (hashlib's, whose OpenSSL picks the best code for that CPU). The same
 * function either way: the tests compare sha256() below with hashlib's on
 * lengths around every block boundary and on random data, and the walk's
 * digests with the Python walk's. This is the standard compression
 * function of FIPS 180-4 written with the SHA extensions' intrinsics. */

static int own_sha256; /* set at import: the CPU has the SHA instructions */

#ifdef SHA_INSTRUCTIONS_BUILT
static const uint32_t sha256_k[64] __attribute__((aligned(16))) = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
    0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
    0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
    0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
    0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
    0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
    0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
};

/* Whether this CPU has SSSE3, SSE4.1 and the SHA extensions. */
static int
cpu_has_sha_instructions(void)
{
    unsigned int a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 9)) || !(c & (1u << 19))) {
        return 0;
    }
    if (__get_cpuid_max(0, NULL) < 7) {
        return 0;
    }
    __cpuid_count(7, 0, a, b, c, d);
    return (b >> 29) & 1;
}

/* Run `blocks` 64-byte blocks through the compression function. The
 * instructions keep the eight working variables in two registers, as
 * (A, B, E, F) and (C, D, G, H), highest lane first; each sha256rnds2 does
 * two rounds and returns the new (A, B, E, F), whose predecessor becomes
 * the next (C, D, G, H). */
__attribute__((target("sha,sse4.1,ssse3"))) static void
sha256_blocks(uint32_t state[8], const unsigned char *data, size_t blocks)
{
    /* Each 32-bit word of a block is big-endian. */
    const __m128i swap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
    __m128i dcba = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&state[0]), 0xB1);
    __m128i efgh = _mm_shuffle_epi32(_mm_loadu_si128((const __m128i *)&state[4]), 0x1B);
    __m128i abef = _mm_alignr_epi8(dcba, efgh, 8);
    __m128i cdgh = _mm_blend_epi16(efgh, dcba, 0xF0);
    for (; blocks > 0; blocks--, data += 64) {
        const __m128i abef_before = abef, cdgh_before = cdgh;
        __m128i w[4]; /* the message schedule's last sixteen words, four to a register */
        for (int g = 0; g < 16; g++) {
            __m128i words;
            if (g < 4) {
                words = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(data + 16 * g)), swap);
            }
            else {
                /* W[t] = s1(W[t-2]) + W[t-7] + s0(W[t-15]) + W[t-16], four at a time:
                 * w[g % 4] holds words t-16.., then t-12.., t-8.. and t-4.. follow. */
                __m128i sum = _mm_sha256msg1_epu32(w[g & 3], w[(g + 1) & 3]);
                sum = _mm_add_epi32(sum, _mm_alignr_epi8(w[(g + 3) & 3], w[(g + 2) & 3], 4));
                words = _mm_sha256msg2_epu32(sum, w[(g + 3) & 3]);
            }
            w[g & 3] = words;
            __m128i k = _mm_add_epi32(words, _mm_load_si128((const __m128i *)&sha256_k[4 * g]));
            cdgh = _mm_sha256rnds2_epu32(cdgh, abef, k);
            abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(k, 0x0E));
            /* After two rounds each the names are right again: abef was
             * written last, and cdgh holds the (A, B, E, F) before it. */
        }
        abef = _mm_add_epi32(abef, abef_before);
        cdgh = _mm_add_epi32(cdgh, cdgh_before);
    }
    __m128i feba = _mm_shuffle_epi32(abef, 0x1B);
    __m128i dchg = _mm_shuffle_epi32(cdgh, 0xB1);
    _mm_storeu_si128((__m128i *)&state[0], _mm_blend_epi16(feba, dchg, 0xF0));
    _mm_storeu_si128((__m128i *)&state[4], _mm_alignr_epi8(dchg, feba, 8));
}

/* SHA-256 of data[:size] into out: only where cpu_has_sha_instructions(). */
static void
sha256_own(const unsigned char *data, size_t size, unsigned char out[32])
{
    uint32_t state[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                         0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    size_t whole = size / 64, rest = size % 64;
    sha256_blocks(state, data, whole);
    /* The padding: 0x80, zeros, and the length in bits, big-endian, at the
     * end of the last block (a second one when the length does not fit). */
    unsigned char tail[128] = {0};
    memcpy(tail, data + whole * 64, rest);
    tail[rest] = 0x80;
    size_t tail_blocks = rest + 9 > 64 ? 2 : 1;
    uint64_t bits = (uint64_t)size * 8;
    for (int i = 0; i < 8; i++) {
        tail[tail_blocks * 64 - 1 - i] = (unsigned char)(bits >> (8 * i));
    }
    sha256_blocks(state, tail, tail_blocks);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(state[i] >> 24);
        out[4 * i + 1] = (unsigned char)(state[i] >> 16);
        out[4 * i + 2] = (unsigned char)(state[i] >> 8);
        out[4 * i + 3] = (unsigned char)state[i];
    }
}
#endif

PyDoc_STRVAR(sha256_doc,
"sha256(data, /)\n--\n\n"
"The 32-byte SHA-256 of bytes, as the walk computes the state digest where\n"
"the CPU has the SHA instructions; None where it has not (the walk then\n"
"calls the bound hash). For the tests, which compare it with hashlib's.");

static PyObject *
sha256_bytes(PyObject *module, PyObject *data)
{
    if (!PyBytes_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "sha256() expects bytes");
        return NULL;
    }
#ifdef SHA_INSTRUCTIONS_BUILT
    if (own_sha256) {
        unsigned char out[32];
        sha256_own((const unsigned char *)PyBytes_AS_STRING(data),
                   (size_t)PyBytes_GET_SIZE(data), out);
        return PyBytes_FromStringAndSize((const char *)out, 32);
    }
#endif
    Py_RETURN_NONE;
}

PyDoc_STRVAR(use_sha_instructions_doc,
"use_sha_instructions(use, /)\n--\n\n"
"Whether the walk hashes with the CPU's SHA instructions (where it has them)\n"
"or with the bound hash; returns the previous setting. For the tests, which\n"
"run both.");

static PyObject *
use_sha_instructions(PyObject *module, PyObject *use)
{
    int truthy = PyObject_IsTrue(use);
    if (truthy < 0) {
        return NULL;
    }
    int previous = own_sha256;
#ifdef SHA_INSTRUCTIONS_BUILT
    own_sha256 = truthy && cpu_has_sha_instructions();
#endif
    return PyBool_FromLong(previous);
}

/* The 16-byte state digest of the JSON in `out`: SHA-256, its first bytes. */
static PyObject *
digest_of(const Buffer *out)
{
    PyObject *encoded = NULL, *hash = NULL, *full = NULL, *result = NULL;
#ifdef SHA_INSTRUCTIONS_BUILT
    if (own_sha256) {
        unsigned char full_digest[32];
        sha256_own((const unsigned char *)out->data, (size_t)out->size, full_digest);
        return PyBytes_FromStringAndSize((const char *)full_digest, DIGEST_SIZE);
    }
#endif
    if ((encoded = PyBytes_FromStringAndSize(out->data, out->size)) == NULL ||
        (hash = PyObject_CallOneArg(sha256, encoded)) == NULL ||
        (full = PyObject_CallMethodNoArgs(hash, str_digest)) == NULL) {
        goto done;
    }
    if (!PyBytes_CheckExact(full) || PyBytes_GET_SIZE(full) < DIGEST_SIZE) {
        PyErr_SetString(PyExc_TypeError, "the bound hash gave no digest of 16 bytes or more");
        goto done;
    }
    result = PyBytes_FromStringAndSize(PyBytes_AS_STRING(full), DIGEST_SIZE);
done:
    Py_XDECREF(encoded);
    Py_XDECREF(hash);
    Py_XDECREF(full);
    return result;
}

/* The 16-byte state digest: SHA-256 of [conversation id, version, [parts
 * sorted by compare]]. */
static PyObject *
parts_digest(Parts *parts, int (*compare)(const void *, const void *), PyObject *conversation_id,
             PyObject *version)
{
    Buffer out = {0};
    PyObject *result = NULL;
    if (parts->count > 1) {
        qsort(parts->index, (size_t)parts->count, sizeof(Part), compare);
    }
    if (buffer_reserve(&out, parts->json.size + 128) < 0 || buffer_char(&out, '[') < 0 ||
        write_value(&out, conversation_id) < 0 || buffer_char(&out, ',') < 0 ||
        write_value(&out, version) < 0 || buffer_write(&out, ",[", 2) < 0) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < parts->count; i++) {
        const Part *part = &parts->index[i];
        if ((i > 0 && buffer_char(&out, ',') < 0) ||
            buffer_write(&out, parts->json.data + part->start, part->length) < 0) {
            goto done;
        }
    }
    if (buffer_write(&out, "]]", 2) < 0) {
        goto done;
    }
    result = digest_of(&out);
done:
    PyMem_Free(out.data);
    return result;
}

/* One participant, as the loop body of snapshot._walk. */
static int
walk_participant(Walk *w, PyObject *p, PyObject *media, int *acd_connected,
                 int *agent_connected, int *active, int *monitoring)
{
    int status;
    int connected = 0;
    w->comms.size = 0;
    w->comm_count = 0;
    PyObject *state = field(p, &participant, P_STATE);
    if (state != Py_None) {
        /* A media participant: it is its one communication, of the topic's media. */
        int equal = equals(state, str_connected);
        if (equal < 0) {
            return -1;
        }
        connected = equal;
        if (media != Py_None) {
            PyObject *bucket = bucket_of(w, media);
            if (bucket == NULL || PyList_Append(bucket, state) < 0) {
                return -1;
            }
        }
        PyObject *type = field(p, &participant, P_TYPE);
        if (type != Py_None && PySet_Add(w->message_types, type) < 0) {
            return -1;
        }
        status = add_comm(w, media, p, &participant, P_STATE,
                          field(p, &participant, P_MESSAGES),
                          field(p, &participant, P_CALLBACK_SCHEDULED_TIME));
        if (status != 0) {
            return status;
        }
    }
    else {
        for (int i = 0; i < MEDIA_LISTS; i++) {
            PyObject *list = field(p, &participant, P_CALLS + i);
            int truthy = PyObject_IsTrue(list);
            if (truthy < 0) {
                return -1;
            }
            if (truthy) {
                status = communications(w, media_names[i], list, &connected,
                                        P_CALLS + i == P_MESSAGES);
                if (status != 0) {
                    return status;
                }
            }
        }
    }

    if (add_stamp(w, field(p, &participant, P_CONNECTED_TIME)) < 0 ||
        add_stamp(w, field(p, &participant, P_END_TIME)) < 0 ||
        add_stamp(w, field(p, &participant, P_START_ACW_TIME)) < 0 ||
        add_stamp(w, field(p, &participant, P_END_ACW_TIME)) < 0) {
        return -1;
    }
    PyObject *participant_wrapup = field(p, &participant, P_WRAPUP);
    if ((status = part_stamps(w, participant_wrapup, &wrapup, W_END_TIME, W_END_TIME)) != 0) {
        return status;
    }
    PyObject *purpose = field(p, &participant, P_PURPOSE);
    PyObject *user_id, *queue_id;
    if ((status = id_of(p, P_USER_ID, P_USER, &user_id)) != 0 ||
        (status = id_of(p, P_QUEUE_ID, P_QUEUE, &queue_id)) != 0) {
        return status;
    }
    int truthy = PyObject_IsTrue(user_id);
    if (truthy < 0 || (truthy && PySet_Add(w->user_ids, user_id) < 0)) {
        return -1;
    }
    truthy = PyObject_IsTrue(queue_id);
    if (truthy < 0) {
        return -1;
    }
    int is_acd = equals(purpose, str_acd);
    if (is_acd < 0) {
        return -1;
    }
    int is_agent = is_acd ? 0 : equals(purpose, str_agent);
    if (is_agent < 0) {
        return -1;
    }
    if (truthy && (is_acd || is_agent) && PySet_Add(w->queue_ids, queue_id) < 0) {
        return -1;
    }
    if (connected) {
        if (is_acd) {
            *acd_connected = 1;
        }
        else if (is_agent) {
            *agent_connected = *active = 1;
        }
        else {
            int is_user = equals(purpose, str_user);
            if (is_user < 0) {
                return -1;
            }
            if (is_user) {
                *active = 1;
            }
        }
        truthy = PyObject_IsTrue(field(p, &participant, P_MONITORED_PARTICIPANT_ID));
        if (truthy < 0) {
            return -1;
        }
        if (truthy) {
            *monitoring = 1;
        }
    }
    return w->comm_count > 0 ? add_part(w, p, purpose, user_id, queue_id, participant_wrapup) : 0;
}

/* Each media name's list of states, as a tuple (the dict's keys stay). */
static int
freeze_states(PyObject *states)
{
    Py_ssize_t position = 0;
    PyObject *name, *found;
    while (PyDict_Next(states, &position, &name, &found)) {
        PyObject *frozen = PyList_AsTuple(found);
        /* Replacing the value of a key the dict has is safe while iterating. */
        if (frozen == NULL || PyDict_SetItem(states, name, frozen) < 0) {
            Py_XDECREF(frozen);
            return -1;
        }
        Py_DECREF(frozen);
    }
    return 0;
}

PyDoc_STRVAR(walk_doc,
"walk(conversation_id, participants, media, /)\n--\n\n"
"snapshot._walk, compiled: the same tuple, or None when an input is not of\n"
"the bound types (the caller then walks in Python).");

static PyObject *
walk(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (!takes("walk", 3, nargs)) {
        return NULL;
    }
    if (!bound || encode_value == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "walk() before bind() and bind_digest()");
        return NULL;
    }
    PyObject *conversation_id = args[0], *participants = args[1], *media = args[2];
    if (!PyList_CheckExact(participants) || (media != Py_None && !PyUnicode_CheckExact(media))) {
        Py_RETURN_NONE;
    }
    Walk w = {0};
    int acd_connected = 0, agent_connected = 0, active = 0, monitoring = 0;
    int status = 0;
    PyObject *result = NULL, *media_names = NULL, *version = NULL, *digest = NULL;
    /* The sets are frozensets from the start: PySet_Add fills a frozenset
     * that nothing else references yet, which saves a copy of each. */
    if ((w.states = PyDict_New()) == NULL ||
        (w.message_types = PyFrozenSet_New(NULL)) == NULL ||
        (w.queue_ids = PyFrozenSet_New(NULL)) == NULL ||
        (w.user_ids = PyFrozenSet_New(NULL)) == NULL) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(participants); i++) {
        PyObject *p = PyList_GET_ITEM(participants, i);
        if (p == Py_None) {
            continue;
        }
        if (!Py_IS_TYPE(p, participant.type)) {
            status = UNEXPECTED;
            break;
        }
        status = walk_participant(&w, p, media, &acd_connected, &agent_connected, &active,
                                  &monitoring);
        if (status != 0) {
            break;
        }
    }
    if (status == UNEXPECTED) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    if (status != 0 || freeze_states(w.states) < 0 ||
        (media_names = PyFrozenSet_New(w.states)) == NULL) {
        goto done;
    }
    version = w.newest ? PyObject_CallMethodNoArgs(w.newest, str_timestamp)
                       : PyFloat_FromDouble(0.0);
    if (version == NULL ||
        (digest = parts_digest(&w.parts, compare_parts, conversation_id, version)) == NULL) {
        goto done;
    }
    result = PyTuple_Pack(10, media_names, w.states, w.message_types, w.queue_ids, w.user_ids,
                          acd_connected && !agent_connected ? Py_True : Py_False,
                          active ? Py_True : Py_False, monitoring ? Py_True : Py_False, version,
                          digest);
done:
    Py_XDECREF(media_names);
    Py_XDECREF(version);
    Py_XDECREF(digest);
    Py_XDECREF(w.states);
    Py_XDECREF(w.message_types);
    Py_XDECREF(w.queue_ids);
    Py_XDECREF(w.user_ids);
    PyMem_Free(w.comms.data);
    parts_free(&w.parts);
    return result;
}

/* -- binding ---------------------------------------------------------------- */

PyDoc_STRVAR(bind_digest_doc,
"bind_digest(encode, sha256, /)\n--\n\n"
"The state digest's JSON encoder and hash, as snapshot._state_digest calls\n"
"them: the walk hands the encoder every value it does not write itself, and\n"
"its JSON to the hash where the CPU has no SHA instructions (see sha256()).");

static PyObject *
bind_digest(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (!takes("bind_digest", 2, nargs)) {
        return NULL;
    }
    if (!PyCallable_Check(args[0]) || !PyCallable_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "bind_digest() expects two callables");
        return NULL;
    }
    Py_XSETREF(encode_value, Py_NewRef(args[0]));
    Py_XSETREF(sha256, Py_NewRef(args[1]));
    Py_RETURN_NONE;
}

PyDoc_STRVAR(bind_doc,
"bind(participant, communication, detail, ref, wrapup, after_call_work, media_names, /)\n--\n\n"
"Learn the slot offsets of the snapshot's struct types and the media list\n"
"names (the keys of ``states``, in the walk's order). Raises TypeError when a\n"
"field is not an object slot: the struct layout is not the one this walk reads.");

static PyObject *
bind(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (!takes("bind", 7, nargs)) {
        return NULL;
    }
    /* Bound into locals first, so that a failed bind leaves the last good one. */
    Layout layouts[6] = {{0}};
    const char *const *names[6] = {participant_fields, communication_fields, detail_fields,
                                   ref_fields, wrapup_fields, after_call_work_fields};
    const int counts[6] = {P_COUNT, C_COUNT, D_COUNT, R_COUNT, W_COUNT, A_COUNT};
    Layout *targets[6] = {&participant, &communication, &detail, &ref, &wrapup, &after_call_work};
    PyObject *media = args[6];
    int ok = PyTuple_CheckExact(media) && PyTuple_GET_SIZE(media) == MEDIA_LISTS;
    for (int i = 0; ok && i < MEDIA_LISTS; i++) {
        ok = PyUnicode_CheckExact(PyTuple_GET_ITEM(media, i));
    }
    if (!ok) {
        PyErr_Format(PyExc_TypeError, "bind() expects a tuple of %d media names (str)",
                     MEDIA_LISTS);
        return NULL;
    }
    for (int i = 0; i < 6; i++) {
        if (bind_layout(&layouts[i], args[i], names[i], counts[i]) < 0) {
            for (int j = 0; j < i; j++) {
                Py_DECREF(layouts[j].type);
            }
            return NULL;
        }
    }
    for (int i = 0; i < 6; i++) {
        PyTypeObject *old = targets[i]->type;
        *targets[i] = layouts[i];
        Py_XDECREF(old);
    }
    for (int i = 0; i < MEDIA_LISTS; i++) {
        Py_XSETREF(media_names[i], Py_NewRef(PyTuple_GET_ITEM(media, i)));
    }
    bound = 1;
    Py_RETURN_NONE;
}

/* -- the notification split -------------------------------------------------
 *
 * frames._split_in_python (Python) is the specification: split() must return
 * an equal Notification, or None, for every input, and the tests hold the two
 * to that. It is the pool's first look at every frame, so the regular
 * expression, slices and decodes it takes in Python (about 1.5 us a frame)
 * are worth a few dozen lines here.
 */

static PyObject *notification_type; /* frames.Notification, or NULL before bind_split() */
static PyObject *excluded_topics;   /* tuple of ASCII str: topics that are not notifications */

static const char HEAD_TOPIC[] = "{\"topicName\":\"";
static const char HEAD_VERSION[] = "\",\"version\":\"";
static const char HEAD_BODY[] = "\",\"eventBody\":";
static const char TAIL[] = ",\"metadata\":{\"CorrelationId\":\"";
static const char END[] = "\"}}";
#define SIZE(literal) ((Py_ssize_t)sizeof(literal) - 1)

/* frames._PLAIN: printable ASCII other than '"' and '\'. */
static inline int
is_plain(unsigned char c)
{
    return c >= 0x20 && c <= 0x7e && c != '"' && c != '\\';
}

/* frames._SPACES: JSON's whitespace. */
static inline int
is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static inline Py_ssize_t
plain_run(const char *s, Py_ssize_t at, Py_ssize_t end)
{
    while (at < end && is_plain((unsigned char)s[at])) {
        at++;
    }
    return at;
}

static inline int
has_at(const char *s, Py_ssize_t n, Py_ssize_t at, const char *literal, Py_ssize_t size)
{
    return at >= 0 && n - at >= size && memcmp(s + at, literal, (size_t)size) == 0;
}

/* Whether s is UTF-8 as Python's strict decoder takes it (Unicode's table
 * of well-formed byte sequences: no overlong form, no surrogate, nothing
 * past U+10FFFF), without building the str that decoding would: a frame
 * with names beyond ASCII is the common case on many tenants. Runs of
 * ASCII are skipped eight bytes at a time. */
static int
is_utf8(const char *text, Py_ssize_t n)
{
    const unsigned char *s = (const unsigned char *)text;
    const uint64_t high_bits = UINT64_C(0x8080808080808080);
    Py_ssize_t i = 0;
    for (;;) {
        /* Up to the next byte beyond ASCII: 32 bytes at a time, with one
         * test each (a test per word measured half as fast again), then 8,
         * then one. */
        while (n - i >= 32) {
            uint64_t words[4];
            memcpy(words, s + i, 32);
            if ((words[0] | words[1] | words[2] | words[3]) & high_bits) {
                break;
            }
            i += 32;
        }
        while (n - i >= 8) {
            uint64_t word;
            memcpy(&word, s + i, 8);
            if (word & high_bits) {
                break;
            }
            i += 8;
        }
        while (i < n && s[i] < 0x80) {
            i++;
        }
        if (i >= n) {
            return 1;
        }
        unsigned char lead = s[i];
        /* The continuation bytes that follow, and the range of the first. */
        Py_ssize_t more;
        unsigned char low = 0x80, high = 0xBF;
        if (lead >= 0xC2 && lead <= 0xDF) {
            more = 1;
        }
        else if (lead >= 0xE0 && lead <= 0xEF) {
            more = 2;
            if (lead == 0xE0) {
                low = 0xA0; /* shorter forms are overlong */
            }
            else if (lead == 0xED) {
                high = 0x9F; /* ED A0..BF: the surrogates */
            }
        }
        else if (lead >= 0xF0 && lead <= 0xF4) {
            more = 3;
            if (lead == 0xF0) {
                low = 0x90;
            }
            else if (lead == 0xF4) {
                high = 0x8F; /* past U+10FFFF beyond */
            }
        }
        else {
            return 0; /* a continuation byte, C0, C1 or F5..FF as a lead */
        }
        if (n - i <= more || s[i + 1] < low || s[i + 1] > high) {
            return 0;
        }
        for (Py_ssize_t k = 2; k <= more; k++) {
            if ((s[i + k] & 0xC0) != 0x80) {
                return 0;
            }
        }
        i += more + 1;
    }
    return 1;
}

/* The last start of TAIL at or after from, as bytes.rfind; -1 when none. */
static Py_ssize_t
rfind_tail(const char *s, Py_ssize_t n, Py_ssize_t from)
{
    for (Py_ssize_t at = n - SIZE(TAIL); at >= from; at--) {
        if (s[at] == ',' && memcmp(s + at, TAIL, (size_t)SIZE(TAIL)) == 0) {
            return at;
        }
    }
    return -1;
}

PyDoc_STRVAR(split_doc,
"split(data, /)\n--\n\n"
"frames._split_in_python, compiled: the same Notification, or None.");

static PyObject *
split(PyObject *module, PyObject *data)
{
    if (notification_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "split() before bind_split()");
        return NULL;
    }
    const char *s;
    Py_ssize_t n;
    int check_utf8 = 0;
    if (PyBytes_Check(data)) {
        s = PyBytes_AS_STRING(data);
        n = PyBytes_GET_SIZE(data);
        check_utf8 = 1;
    }
    else if (PyUnicode_Check(data)) {
#if PY_VERSION_HEX < 0x030C0000
        if (PyUnicode_READY(data) < 0) {
            return NULL;
        }
#endif
        if (PyUnicode_IS_ASCII(data)) {
            /* A str of ASCII characters keeps them one byte each: its bytes. */
            s = (const char *)PyUnicode_DATA(data);
            n = PyUnicode_GET_LENGTH(data);
        }
        else if ((s = PyUnicode_AsUTF8AndSize(data, &n)) == NULL) {
            /* Lone surrogates have no UTF-8: decode_frame says what is wrong. */
            if (!PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
                return NULL;
            }
            PyErr_Clear();
            Py_RETURN_NONE;
        }
    }
    else {
        Py_RETURN_NONE;
    }

    /* {"topicName":"T","version":"V","eventBody": */
    if (!has_at(s, n, 0, HEAD_TOPIC, SIZE(HEAD_TOPIC))) {
        Py_RETURN_NONE;
    }
    Py_ssize_t topic_start = SIZE(HEAD_TOPIC);
    Py_ssize_t topic_end = plain_run(s, topic_start, n);
    if (topic_end == topic_start || !has_at(s, n, topic_end, HEAD_VERSION, SIZE(HEAD_VERSION))) {
        Py_RETURN_NONE;
    }
    Py_ssize_t version_start = topic_end + SIZE(HEAD_VERSION);
    Py_ssize_t version_end = plain_run(s, version_start, n);
    if (!has_at(s, n, version_end, HEAD_BODY, SIZE(HEAD_BODY))) {
        Py_RETURN_NONE;
    }
    Py_ssize_t body_start = version_end + SIZE(HEAD_BODY);
    if (body_start < n && is_space(s[body_start])) {
        Py_RETURN_NONE;
    }
    /* ...,"metadata":{"CorrelationId":"C"}} */
    if (!has_at(s, n, n - SIZE(END), END, SIZE(END))) {
        Py_RETURN_NONE;
    }
    Py_ssize_t tail = rfind_tail(s, n, body_start);
    Py_ssize_t id_start = tail + SIZE(TAIL), id_end = n - SIZE(END);
    if (tail <= body_start || is_space(s[tail - 1]) ||
        id_start > id_end || plain_run(s, id_start, id_end) != id_end) {
        Py_RETURN_NONE;
    }
    if (check_utf8 && !is_utf8(s, n)) {
        Py_RETURN_NONE;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(excluded_topics); i++) {
        PyObject *prefix = PyTuple_GET_ITEM(excluded_topics, i);
        Py_ssize_t size = PyUnicode_GET_LENGTH(prefix);
        if (topic_end - topic_start >= size &&
            memcmp(s + topic_start, PyUnicode_DATA(prefix), (size_t)size) == 0) {
            Py_RETURN_NONE;
        }
    }
    /* Built one by one, stopping at the first failure (no call may run
     * with an exception already set). */
    PyObject *args[4] = {NULL, NULL, NULL, NULL};
    PyObject *result = NULL;
    if ((args[0] = PyUnicode_DecodeASCII(s + topic_start, topic_end - topic_start, NULL)) &&
        (args[1] = PyUnicode_DecodeASCII(s + version_start, version_end - version_start,
                                         NULL)) &&
        (args[2] = PyBytes_FromStringAndSize(s + body_start, tail - body_start)) &&
        (args[3] = PyUnicode_DecodeASCII(s + id_start, id_end - id_start, NULL))) {
        result = PyObject_Vectorcall(notification_type, args, 4, NULL);
    }
    for (int i = 0; i < 4; i++) {
        Py_XDECREF(args[i]);
    }
    return result;
}

PyDoc_STRVAR(bind_split_doc,
"bind_split(notification, excluded_topics, /)\n--\n\n"
"The type split() builds (called with topic, version, body, correlation id)\n"
"and the topic prefixes it leaves to the full decoder (a tuple of ASCII str).");

static PyObject *
bind_split(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (!takes("bind_split", 2, nargs)) {
        return NULL;
    }
    PyObject *type = args[0], *excluded = args[1];
    int ok = PyType_Check(type) && PyTuple_CheckExact(excluded);
    for (Py_ssize_t i = 0; ok && i < PyTuple_GET_SIZE(excluded); i++) {
        PyObject *prefix = PyTuple_GET_ITEM(excluded, i);
        ok = PyUnicode_CheckExact(prefix) && PyUnicode_IS_ASCII(prefix);
    }
    if (!ok) {
        PyErr_SetString(PyExc_TypeError,
                        "bind_split() expects a type and a tuple of ASCII str prefixes");
        return NULL;
    }
    Py_XSETREF(notification_type, Py_NewRef(type));
    Py_XSETREF(excluded_topics, Py_NewRef(excluded));
    Py_RETURN_NONE;
}

PyDoc_STRVAR(utf8_doc,
"is_utf8(data, /)\n--\n\n"
"Whether the bytes are UTF-8 as bytes.decode('utf-8') takes them, without decoding.");

static PyObject *
utf8_check(PyObject *module, PyObject *data)
{
    (void)module;
    if (!PyBytes_Check(data)) {
        PyErr_Format(PyExc_TypeError, "is_utf8() expects bytes, not %.100s",
                     Py_TYPE(data)->tp_name);
        return NULL;
    }
    return PyBool_FromLong(is_utf8(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data)));
}

/* -- the snapshot read --------------------------------------------------------
 *
 * read() computes a conversation snapshot's facts straight from the body's
 * bytes, in one pass: what snapshot._conversation_facts gets from the typed
 * decode and the walk above, without building the decoded tree. The typed
 * decode and the walk cost about 6.5 us of a 2.3 KB snapshot between them,
 * most of it making Python objects (structs, strings, datetimes) that the
 * walk reads once and drops; this reads the same fields and makes only the
 * facts.
 *
 * It answers only where it is sure to answer as the typed decode and the
 * Python walk would, and returns None for everything else, which the caller
 * then reads the usual way: an unusual body costs speed, never correctness.
 * Sure means:
 *
 * - the JSON is well-formed by RFC 8259, at most MAX_DEPTH deep and within
 *   the interpreter's recursion limit (see enter()), with no control
 *   character in a string and no escaped surrogate outside a pair (the
 *   cases where the decoder's verdict is not the grammar's are left to it);
 * - every field the snapshot's structs name has the type they give it, or
 *   is null, and appears once in its object; the text the facts use is
 *   plain ASCII with no escape (ids, states, purposes, codes...), but for
 *   the attributes, any text, which the decoder decodes where it is not
 *   plain;
 * - every timestamp is "YYYY-MM-DDTHH:MM:SS[.f{1,6}]Z" of a real date.
 *
 * Text beyond ASCII elsewhere in the body (names, addresses) is skipped as
 * the decoder skips it, unchecked. Which fields there are, and their JSON
 * names, are read from the structs' own definitions at bind_reader().
 *
 * The facts' values are then computed as the walk above computes them, and
 * the state digest written in the same bytes; the version and the two
 * timestamps the digest covers are handed to the same encoder. The tests
 * hold read() to the decode-and-walk on the emulator's snapshots and on
 * generated and mangled bodies.
 */

#define MAX_DEPTH 64
#define MAX_KEY 40
/* A number longer than this is left to the decoder. */
#define MAX_NUMBER 300
/* What the helpers return when the body is not one read() is sure of. */
#define GIVE_UP 1

enum { F_STR, F_BOOL, F_STAMP, F_REF, F_WRAPUP, F_ACW, F_COMMS, F_DETAILS, F_ATTRS, F_PARTS };
enum { K_CONVERSATION, K_PARTICIPANT, K_COMMUNICATION, K_DETAIL, K_REF, K_WRAPUP, K_ACW, KINDS };
enum { V_ID, V_PARTICIPANTS, V_COUNT };
static const char *const conversation_fields[V_COUNT] = {"id", "participants"};

/* Each field's type, in the order of the *_fields names above. */
static const unsigned char participant_types[P_COUNT] = {
    F_STR, F_STR, F_STR, F_STR, F_REF, F_REF,
    F_STR, F_BOOL, F_STAMP, F_STR, F_STR, F_BOOL, F_BOOL, F_STR,
    F_ATTRS, F_STR,
    F_STAMP, F_STAMP, F_STAMP, F_STAMP, F_WRAPUP,
    F_COMMS, F_COMMS, F_COMMS, F_COMMS, F_COMMS, F_COMMS, F_COMMS, F_COMMS, F_COMMS,
    F_STAMP,
};
static const unsigned char communication_types[C_COUNT] = {
    F_STR, F_BOOL, F_STAMP, F_STR, F_STR, F_BOOL, F_BOOL, F_STR,
    F_DETAILS, F_STR, F_REF, F_STR,
    F_STAMP, F_STAMP, F_ACW, F_WRAPUP, F_STAMP,
};
static const unsigned char detail_types[D_COUNT] = {F_STR, F_REF, F_STR};
static const unsigned char ref_types[R_COUNT] = {F_STR};
static const unsigned char wrapup_types[W_COUNT] = {F_STR, F_STAMP};
static const unsigned char after_call_work_types[A_COUNT] = {F_STAMP, F_STAMP};
static const unsigned char conversation_types[V_COUNT] = {F_STR, F_PARTS};

/* A struct's fields by JSON name, in an open-addressed table (a linear
 * search with memcmp was a third of the read). */
#define KEY_SLOTS 128
typedef struct {
    int count;
    const unsigned char *types;
    unsigned char lengths[P_COUNT];
    char keys[P_COUNT][MAX_KEY];
    signed char slots[KEY_SLOTS]; /* a field's index, or -1 */
} Schema;

static inline unsigned int
key_slot(const char *p, Py_ssize_t n)
{
    unsigned char first = (unsigned char)p[0], middle = (unsigned char)p[n / 2];
    unsigned char last = (unsigned char)p[n - 1];
    return ((unsigned int)n * 7u + first * 31u + middle * 17u + last) % KEY_SLOTS;
}

/* The index of the field named p[:n], or -1. */
static inline int
field_index(const Schema *schema, const char *p, Py_ssize_t n)
{
    if (n == 0 || n >= MAX_KEY) {
        return -1;
    }
    for (unsigned int slot = key_slot(p, n);; slot = (slot + 1) % KEY_SLOTS) {
        int index = schema->slots[slot];
        if (index < 0) {
            return -1;
        }
        if (schema->lengths[index] == n && memcmp(schema->keys[index], p, (size_t)n) == 0) {
            return index;
        }
    }
}

static Schema schemas[KINDS];
static PyObject *facts_type; /* snapshot.ConversationFacts, or NULL before bind_reader() */
static PyObject *decode_text; /* msgspec's decode of one JSON string to str */

typedef struct Node Node;
typedef struct Pair {
    Span key, value;
    int plain_key, plain_value; /* printable ASCII without escapes */
    struct Pair *next;
} Pair;

/* One field of a decoded object; present is 0 for absent and null alike. */
typedef struct {
    unsigned char present;
    union {
        Span s;
        int b;
        int64_t us; /* a timestamp: microseconds since the Unix epoch */
        Node *node;
        struct {
            Node *first;
            Py_ssize_t total; /* items, nulls included: the list's truth */
        } list;
        struct {
            Pair *first;
            Py_ssize_t count;
        } pairs;
    } u;
} Value;

struct Node {
    Node *next; /* the next non-null item of the list holding it */
    uint64_t seen;
    Value f[];
};

/* All the nodes of one read, freed together: a first block on the stack
 * holds a typical snapshot's. */
typedef struct Block {
    struct Block *previous;
    char data[];
} Block;

typedef struct {
    char *at, *end;
    Block *blocks;
} Arena;

static void *
arena_alloc(Arena *a, size_t size)
{
    size = (size + 7) & ~(size_t)7;
    if ((size_t)(a->end - a->at) < size) {
        size_t capacity = size > 32768 ? size : 32768;
        Block *block = PyMem_Malloc(sizeof(Block) + capacity);
        if (block == NULL) {
            PyErr_NoMemory();
            return NULL;
        }
        block->previous = a->blocks;
        a->blocks = block;
        a->at = block->data;
        a->end = block->data + capacity;
    }
    void *out = a->at;
    a->at += size;
    return out;
}

static void
arena_free(Arena *a)
{
    while (a->blocks != NULL) {
        Block *previous = a->blocks->previous;
        PyMem_Free(a->blocks);
        a->blocks = previous;
    }
}

typedef struct {
    const unsigned char *p, *end;
    int depth;
    Arena arena;
} Reader;

static inline void
skip_space(Reader *r)
{
    while (r->p < r->end && is_space((char)*r->p)) {
        r->p++;
    }
}

static inline int
literal(Reader *r, const char *text, Py_ssize_t n)
{
    if (r->end - r->p < n || memcmp(r->p, text, (size_t)n) != 0) {
        return GIVE_UP;
    }
    r->p += n;
    return 0;
}

static inline int
hex_digit(unsigned char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* What read_string stops at: 1 for '"', '\\' and control characters, 2
 * for DEL and bytes beyond ASCII (which only a typed string refuses). */
static unsigned char string_stops[256];

static void
init_string_stops(void)
{
    for (int c = 0; c < 256; c++) {
        string_stops[c] = c < 0x20 || c == '"' || c == '\\' ? 1 : c >= 0x7f ? 2 : 0;
    }
}

/* The first byte from p on that a string stops at (see string_stops), or
 * end. Sixteen bytes at a time where the CPU has SSE2 (every x86-64 does):
 * most of a snapshot's bytes are in strings, and a byte at a time was a
 * third of the read. */
static inline const unsigned char *
string_stop(const unsigned char *p, const unsigned char *end, unsigned char stop)
{
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
    const __m128i control = _mm_set1_epi8(0x1f), del = _mm_set1_epi8(0x7f);
    while (end - p >= 16) {
        __m128i v = _mm_loadu_si128((const __m128i *)p);
        __m128i hit = _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash));
        /* unsigned v <= 0x1f: max(v, 0x1f) is 0x1f */
        hit = _mm_or_si128(hit, _mm_cmpeq_epi8(_mm_max_epu8(v, control), control));
        if (stop & 2) {
            /* unsigned v >= 0x7f: max(v, 0x7f) is v */
            hit = _mm_or_si128(hit, _mm_cmpeq_epi8(_mm_max_epu8(v, del), v));
        }
        int mask = _mm_movemask_epi8(hit);
        if (mask != 0) {
            return p + __builtin_ctz((unsigned int)mask);
        }
        p += 16;
    }
#endif
    while (p < end && !(string_stops[*p] & stop)) {
        p++;
    }
    return p;
}

/* A string, at its opening quote. A typed one (a value the structs name, or
 * a key) must be plain ASCII without escapes; any other may hold any byte
 * from 0x20 up and the escapes of RFC 8259, a surrogate only as the first
 * of a pair. */
static int
read_string(Reader *r, Span *out, int typed, int *plain)
{
    const unsigned char *p = r->p + 1, *end = r->end;
    const unsigned char *start = p;
    /* A typed string stops at DEL and beyond, and so does one asked
     * whether it is plain; any other goes past them. */
    const unsigned char stop = typed || plain != NULL ? 3 : 1;
    if (plain != NULL) {
        *plain = 1;
    }
    for (;;) {
        p = string_stop(p, end, stop);
        if (p >= end) {
            return GIVE_UP;
        }
        unsigned char c = *p;
        if (c == '"') {
            break;
        }
        if (c < 0x20) {
            return GIVE_UP;
        }
        if (c == '\\') {
            if (typed || end - p < 2) {
                return GIVE_UP;
            }
            if (plain != NULL) {
                *plain = 0;
            }
            unsigned char e = p[1];
            if (e == 'u') {
                if (end - p < 6) {
                    return GIVE_UP;
                }
                int code = 0;
                for (int i = 2; i < 6; i++) {
                    int digit = hex_digit(p[i]);
                    if (digit < 0) {
                        return GIVE_UP;
                    }
                    code = code * 16 + digit;
                }
                p += 6;
                if (code >= 0xD800 && code <= 0xDFFF) {
                    /* Only a high surrogate escaped with its low one: the
                     * decoder refuses the rest, in its own words. */
                    if (code >= 0xDC00 || end - p < 6 || p[0] != '\\' || p[1] != 'u') {
                        return GIVE_UP;
                    }
                    int low = 0;
                    for (int i = 2; i < 6; i++) {
                        int digit = hex_digit(p[i]);
                        if (digit < 0) {
                            return GIVE_UP;
                        }
                        low = low * 16 + digit;
                    }
                    if (low < 0xDC00 || low > 0xDFFF) {
                        return GIVE_UP;
                    }
                    p += 6;
                }
                continue;
            }
            if (e != '"' && e != '\\' && e != '/' && e != 'b' && e != 'f' && e != 'n' &&
                e != 'r' && e != 't') {
                return GIVE_UP;
            }
            p += 2;
            continue;
        }
        /* DEL or beyond ASCII */
        if (typed) {
            return GIVE_UP;
        }
        *plain = 0;
        p++;
    }
    out->p = (const char *)start;
    out->n = p - start;
    r->p = p + 1;
    return 0;
}

static inline int
is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* A number by RFC 8259's grammar. */
static int
skip_number(Reader *r)
{
    const unsigned char *p = r->p, *end = r->end, *start = p;
    if (p < end && *p == '-') {
        p++;
    }
    if (p >= end || !is_digit(*p)) {
        return GIVE_UP;
    }
    if (*p == '0') {
        p++;
    }
    else {
        while (p < end && is_digit(*p)) {
            p++;
        }
    }
    if (p < end && *p == '.') {
        p++;
        if (p >= end || !is_digit(*p)) {
            return GIVE_UP;
        }
        while (p < end && is_digit(*p)) {
            p++;
        }
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-')) {
            p++;
        }
        if (p >= end || !is_digit(*p)) {
            return GIVE_UP;
        }
        while (p < end && is_digit(*p)) {
            p++;
        }
    }
    if (p - start > MAX_NUMBER) {
        return GIVE_UP;
    }
    r->p = p;
    return 0;
}

static int skip_value(Reader *r);

/* Out of an object or array entered with enter(). */
static inline void
leave(Reader *r)
{
    r->depth--;
    Py_LeaveRecursiveCall();
}

/* Into an object or array, at its opening bracket: GIVE_UP when that is
 * too deep, else 0, with *empty set when it closes at once (passed).
 *
 * Too deep is past MAX_DEPTH, or past the interpreter's recursion limit
 * from where the caller stands: the decoder counts each level against it
 * too, and a body it cannot decode for that (RecursionError) has no facts,
 * so the read must not give it any. Counted alike, the read gives up no
 * later than the decoder would fail. */
static inline int
enter(Reader *r, unsigned char close, int *empty)
{
    if (r->depth >= MAX_DEPTH) {
        return GIVE_UP;
    }
    if (Py_EnterRecursiveCall(" reading a snapshot")) {
        PyErr_Clear();
        return GIVE_UP;
    }
    r->depth++;
    r->p++;
    skip_space(r);
    *empty = r->p < r->end && *r->p == close;
    if (*empty) {
        r->p++;
        leave(r);
    }
    return 0;
}

/* What after_member() returns when the container closed. */
#define CLOSED 2

/* After a member or an item: 0 when another follows (at its first byte),
 * CLOSED when the container closed (passed), GIVE_UP for anything else. */
static inline int
after_member(Reader *r, unsigned char close)
{
    skip_space(r);
    if (r->p >= r->end) {
        return GIVE_UP;
    }
    if (*r->p == ',') {
        r->p++;
        skip_space(r);
        return 0;
    }
    if (*r->p != close) {
        return GIVE_UP;
    }
    r->p++;
    leave(r);
    return CLOSED;
}

/* A member's key and its colon, to the value's first byte (see
 * read_string for typed and plain). */
static inline int
read_key(Reader *r, Span *key, int typed, int *plain)
{
    if (r->p >= r->end || *r->p != '"' || read_string(r, key, typed, plain) != 0) {
        return GIVE_UP;
    }
    skip_space(r);
    if (r->p >= r->end || *r->p != ':') {
        return GIVE_UP;
    }
    r->p++;
    skip_space(r);
    return 0;
}

/* An object or an array, at its opening bracket, to its closing one. */
static int
skip_container(Reader *r)
{
    int object = *r->p == '{';
    unsigned char close = object ? '}' : ']';
    int empty, status;
    if ((status = enter(r, close, &empty)) != 0 || empty) {
        return status;
    }
    do {
        Span key;
        if ((object && (status = read_key(r, &key, 0, NULL)) != 0) ||
            (status = skip_value(r)) != 0) {
            return status;
        }
    } while ((status = after_member(r, close)) == 0);
    return status == CLOSED ? 0 : status;
}

/* Any value, at its first byte. */
static int
skip_value(Reader *r)
{
    if (r->p >= r->end) {
        return GIVE_UP;
    }
    Span ignored;
    switch (*r->p) {
    case '{':
    case '[':
        return skip_container(r);
    case '"':
        return read_string(r, &ignored, 0, NULL);
    case 't':
        return literal(r, "true", 4);
    case 'f':
        return literal(r, "false", 5);
    case 'n':
        return literal(r, "null", 4);
    default:
        return skip_number(r);
    }
}

static int
is_leap(int64_t year)
{
    return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
}

/* Days from 1970-01-01 to a date of the proleptic Gregorian calendar. */
static int64_t
days_from_civil(int64_t y, int64_t m, int64_t d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int
digits(const char *s, int n, int *out)
{
    int value = 0;
    for (int i = 0; i < n; i++) {
        if (!is_digit((unsigned char)s[i])) {
            return -1;
        }
        value = value * 10 + (s[i] - '0');
    }
    *out = value;
    return 0;
}

/* "YYYY-MM-DDTHH:MM:SS[.f{1,6}]Z" of a real date and time, as microseconds
 * since the epoch: the one form read() reads (every other is the decoder's). */
static int
parse_stamp(Span s, int64_t *out)
{
    static const int month_days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    const char *p = s.p;
    if (s.n < 20 || s.n == 21 || s.n > 27 || p[4] != '-' || p[7] != '-' || p[10] != 'T' ||
        p[13] != ':' || p[16] != ':' || p[s.n - 1] != 'Z') {
        return GIVE_UP;
    }
    int year, month, day, hour, minute, second, fraction = 0;
    if (digits(p, 4, &year) < 0 || digits(p + 5, 2, &month) < 0 || digits(p + 8, 2, &day) < 0 ||
        digits(p + 11, 2, &hour) < 0 || digits(p + 14, 2, &minute) < 0 ||
        digits(p + 17, 2, &second) < 0) {
        return GIVE_UP;
    }
    if (s.n > 20) {
        int n = (int)s.n - 21;
        if (p[19] != '.' || digits(p + 20, n, &fraction) < 0) {
            return GIVE_UP;
        }
        for (int i = n; i < 6; i++) {
            fraction *= 10;
        }
    }
    if (year < 1 || month < 1 || month > 12 || day < 1 || hour > 23 || minute > 59 ||
        second > 59) {
        return GIVE_UP;
    }
    int last = month_days[month - 1] + (month == 2 && is_leap(year));
    if (day > last) {
        return GIVE_UP;
    }
    int64_t seconds =
        days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second;
    *out = seconds * 1000000 + fraction;
    return 0;
}

static int read_object(Reader *r, int kind, Node **out);

/* A list of objects of one kind (and nulls), at its '['. */
static int
read_list(Reader *r, int kind, Value *v)
{
    Node **tail = &v->u.list.first;
    v->u.list.first = NULL;
    v->u.list.total = 0;
    int empty, status;
    if ((status = enter(r, ']', &empty)) != 0 || empty) {
        return status;
    }
    do {
        if (r->p < r->end && *r->p == 'n') {
            status = literal(r, "null", 4);
        }
        else if (r->p < r->end && *r->p == '{') {
            Node *node;
            if ((status = read_object(r, kind, &node)) == 0) {
                *tail = node;
                tail = &node->next;
            }
        }
        else {
            status = GIVE_UP;
        }
        if (status != 0) {
            return status;
        }
        v->u.list.total++;
    } while ((status = after_member(r, ']')) == 0);
    return status == CLOSED ? 0 : status;
}

/* A dict[str, str], at its '{': its pairs in the body's order. */
static int
read_pairs(Reader *r, Value *v)
{
    Pair **tail = &v->u.pairs.first;
    v->u.pairs.first = NULL;
    v->u.pairs.count = 0;
    int empty, status;
    if ((status = enter(r, '}', &empty)) != 0 || empty) {
        return status;
    }
    do {
        Pair *pair = arena_alloc(&r->arena, sizeof(Pair));
        if (pair == NULL) {
            return -1;
        }
        pair->next = NULL;
        /* Attributes are any text (a flow's data), escapes and all. */
        if ((status = read_key(r, &pair->key, 0, &pair->plain_key)) != 0) {
            return status;
        }
        if (r->p >= r->end || *r->p != '"' ||
            read_string(r, &pair->value, 0, &pair->plain_value) != 0) {
            return GIVE_UP;
        }
        *tail = pair;
        tail = &pair->next;
        v->u.pairs.count++;
    } while ((status = after_member(r, '}')) == 0);
    return status == CLOSED ? 0 : status;
}

/* One field's value, of the type the struct gives it, or null. */
static int
read_field(Reader *r, int type, Value *v)
{
    if (r->p >= r->end) {
        return GIVE_UP;
    }
    unsigned char c = *r->p;
    if (c == 'n') {
        v->present = 0;
        return literal(r, "null", 4);
    }
    int status;
    switch (type) {
    case F_STR:
        if (c != '"') {
            return GIVE_UP;
        }
        status = read_string(r, &v->u.s, 1, NULL);
        break;
    case F_BOOL:
        if (c == 't') {
            v->u.b = 1;
            status = literal(r, "true", 4);
        }
        else if (c == 'f') {
            v->u.b = 0;
            status = literal(r, "false", 5);
        }
        else {
            return GIVE_UP;
        }
        break;
    case F_STAMP: {
        Span text;
        if (c != '"' || (status = read_string(r, &text, 1, NULL)) != 0) {
            return GIVE_UP;
        }
        status = parse_stamp(text, &v->u.us);
        break;
    }
    case F_REF:
    case F_WRAPUP:
    case F_ACW:
        if (c != '{') {
            return GIVE_UP;
        }
        status = read_object(r, type == F_REF ? K_REF : type == F_WRAPUP ? K_WRAPUP : K_ACW,
                             &v->u.node);
        break;
    case F_COMMS:
    case F_DETAILS:
    case F_PARTS:
        if (c != '[') {
            return GIVE_UP;
        }
        status = read_list(r, type == F_COMMS ? K_COMMUNICATION
                              : type == F_DETAILS ? K_DETAIL : K_PARTICIPANT, v);
        break;
    case F_ATTRS:
        if (c != '{') {
            return GIVE_UP;
        }
        status = read_pairs(r, v);
        break;
    default:
        return GIVE_UP;
    }
    if (status == 0) {
        v->present = 1;
    }
    return status;
}

/* An object of one of the structs, at its '{': the fields its schema names,
 * the rest skipped. */
static int
read_object(Reader *r, int kind, Node **out)
{
    const Schema *schema = &schemas[kind];
    size_t size = sizeof(Node) + (size_t)schema->count * sizeof(Value);
    Node *node = arena_alloc(&r->arena, size);
    if (node == NULL) {
        return -1;
    }
    memset(node, 0, size);
    *out = node;
    int empty, status;
    if ((status = enter(r, '}', &empty)) != 0 || empty) {
        return status;
    }
    do {
        Span key;
        /* A key with an escape (or beyond ASCII) might name a field: typed. */
        if ((status = read_key(r, &key, 1, NULL)) != 0) {
            return status;
        }
        int index = field_index(schema, key.p, key.n);
        if (index < 0) {
            status = skip_value(r);
        }
        else if (node->seen & ((uint64_t)1 << index)) {
            return GIVE_UP; /* a field twice: the decoder keeps the last */
        }
        else {
            node->seen |= (uint64_t)1 << index;
            status = read_field(r, schema->types[index], &node->f[index]);
        }
        if (status != 0) {
            return status;
        }
    } while ((status = after_member(r, '}')) == 0);
    return status == CLOSED ? 0 : status;
}

/* -- the facts of what was read (the walk, over the nodes) -- */

typedef struct {
    PyObject *states, *message_types, *queue_ids, *user_ids;
    int have_newest;
    int64_t newest;
    Buffer comms;
    Py_ssize_t comm_count;
    Parts parts;
    Pair **pairs; /* scratch for sorting attributes */
    Py_ssize_t pairs_capacity;
} Reading;

static inline void
read_stamp(Reading *w, const Value *v)
{
    if (v->present && (!w->have_newest || v->u.us > w->newest)) {
        w->newest = v->u.us;
        w->have_newest = 1;
    }
}

static inline const Value *
sub(const Value *v, int index)
{
    static const Value absent = {0};
    return v->present ? &v->u.node->f[index] : &absent;
}

static inline int
span_is(const Value *v, const char *text, Py_ssize_t n)
{
    return v->present && v->u.s.n == n && memcmp(v->u.s.p, text, (size_t)n) == 0;
}

/* The str of a span (plain ASCII: read_string made sure). */
static PyObject *
span_str(Span s)
{
    PyObject *text = PyUnicode_New(s.n, 127);
    if (text != NULL) {
        memcpy(PyUnicode_1BYTE_DATA(text), s.p, (size_t)s.n);
    }
    return text;
}

/* add(container, the str of s): PySet_Add or PyList_Append. */
static int
add_text(int (*add)(PyObject *, PyObject *), PyObject *container, Span s)
{
    PyObject *text = span_str(s);
    if (text == NULL) {
        return -1;
    }
    int status = add(container, text);
    Py_DECREF(text);
    return status;
}

static int
bucket_list(Reading *w, PyObject *name, PyObject **out)
{
    PyObject *bucket = PyDict_GetItemWithError(w->states, name);
    if (bucket == NULL) {
        if (PyErr_Occurred() || (bucket = PyList_New(0)) == NULL) {
            return -1;
        }
        int failed = PyDict_SetItem(w->states, name, bucket);
        Py_DECREF(bucket);
        if (failed) {
            return -1;
        }
    }
    *out = bucket;
    return 0;
}

static int
write_quoted(Buffer *b, Span s)
{
    if (buffer_reserve(b, s.n + 2) < 0) {
        return -1;
    }
    b->data[b->size++] = '"';
    memcpy(b->data + b->size, s.p, (size_t)s.n);
    b->size += s.n;
    b->data[b->size++] = '"';
    return 0;
}

/* A field's value as the encoder writes the decoded one: text and flags
 * here, a timestamp (as the aware datetime the decoder makes) by it. */
static int
write_read(Buffer *b, int type, const Value *v)
{
    if (!v->present) {
        return buffer_write(b, "null", 4);
    }
    if (type == F_STR) {
        return write_quoted(b, v->u.s);
    }
    if (type == F_BOOL) {
        return v->u.b ? buffer_write(b, "true", 4) : buffer_write(b, "false", 5);
    }
    int64_t us = v->u.us;
    /* Floor division: before 1970 the microseconds are negative. */
    int64_t days = us / 86400000000LL;
    int64_t rest = us - days * 86400000000LL;
    if (rest < 0) {
        days -= 1;
        rest += 86400000000LL;
    }
    /* civil_from_days (the inverse of days_from_civil) */
    int64_t z = days + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t day = doy - (153 * mp + 2) / 5 + 1;
    int64_t month = mp < 10 ? mp + 3 : mp - 9;
    int64_t year = yoe + era * 400 + (month <= 2);
    int64_t seconds = rest / 1000000;
    PyObject *stamp = PyDateTimeAPI->DateTime_FromDateAndTime(
        (int)year, (int)month, (int)day, (int)(seconds / 3600), (int)(seconds / 60 % 60),
        (int)(seconds % 60), (int)(rest % 1000000), PyDateTime_TimeZone_UTC,
        PyDateTimeAPI->DateTimeType);
    if (stamp == NULL) {
        return -1;
    }
    int status = write_value(b, stamp);
    Py_DECREF(stamp);
    return status;
}

/* [[message id, status], ...] of a details list's non-null items. */
static int
write_read_details(Buffer *b, const Value *list, int message_id, int message, int status_index)
{
    if (buffer_char(b, '[') < 0) {
        return -1;
    }
    for (Node *d = list->u.list.first; d != NULL; d = d->next) {
        const Value *id = &d->f[message_id];
        if (!(id->present && id->u.s.n > 0)) {
            id = sub(&d->f[message], R_ID);
        }
        if ((d != list->u.list.first && buffer_char(b, ',') < 0) || buffer_char(b, '[') < 0 ||
            write_read(b, F_STR, id) < 0 || buffer_char(b, ',') < 0 ||
            write_read(b, F_STR, &d->f[status_index]) < 0 || buffer_char(b, ']') < 0) {
            return -1;
        }
    }
    return buffer_char(b, ']');
}

/* One digest entry: [media, [the STATE_FIELDS state fields], details or
 * null(, the callback's appointment)]. `types` are the node's field types. */
static int
add_read_comm(Reading *w, PyObject *name, Node *node, const unsigned char *types, int first,
              const Value *messages, int detail_first, const Value *scheduled)
{
    Buffer *b = &w->comms;
    if ((w->comm_count > 0 && buffer_char(b, ',') < 0) || buffer_char(b, '[') < 0 ||
        write_value(b, name) < 0 || buffer_write(b, ",[", 2) < 0) {
        return -1;
    }
    for (int i = 0; i < STATE_FIELDS; i++) {
        if ((i > 0 && buffer_char(b, ',') < 0) ||
            write_read(b, types[first + i], &node->f[first + i]) < 0) {
            return -1;
        }
    }
    if (buffer_write(b, "],", 2) < 0) {
        return -1;
    }
    if (messages->present && messages->u.list.total > 0) {
        if (write_read_details(b, messages, detail_first, detail_first + 1, detail_first + 2) < 0) {
            return -1;
        }
    }
    else if (buffer_write(b, "null", 4) < 0) {
        return -1;
    }
    if (scheduled->present &&
        (buffer_char(b, ',') < 0 || write_read(b, F_STAMP, scheduled) < 0)) {
        return -1;
    }
    w->comm_count++;
    return buffer_char(b, ']');
}

static int
read_communications(Reading *w, PyObject *name, const Value *list, int *connected,
                    int messages_list)
{
    PyObject *bucket = NULL;
    for (Node *comm = list->u.list.first; comm != NULL; comm = comm->next) {
        if (bucket == NULL && bucket_list(w, name, &bucket) < 0) {
            return -1;
        }
        const Value *state = &comm->f[C_STATE];
        if (state->present) {
            if (add_text(PyList_Append, bucket, state->u.s) < 0) {
                return -1;
            }
            if (span_is(state, "connected", 9)) {
                *connected = 1;
            }
        }
        if (add_read_comm(w, name, comm, communication_types, C_STATE, &comm->f[C_MESSAGES],
                          D_MESSAGE_ID, &comm->f[C_CALLBACK_SCHEDULED_TIME]) < 0) {
            return -1;
        }
        read_stamp(w, &comm->f[C_CONNECTED_TIME]);
        read_stamp(w, &comm->f[C_DISCONNECTED_TIME]);
        read_stamp(w, sub(&comm->f[C_AFTER_CALL_WORK], A_START_TIME));
        read_stamp(w, sub(&comm->f[C_AFTER_CALL_WORK], A_END_TIME));
        read_stamp(w, sub(&comm->f[C_WRAPUP], W_END_TIME));
        if (messages_list && comm->f[C_TYPE].present &&
            add_text(PySet_Add, w->message_types, comm->f[C_TYPE].u.s) < 0) {
            return -1;
        }
    }
    return 0;
}

static int
compare_pairs(const void *a, const void *b)
{
    const Pair *x = *(Pair *const *)a, *y = *(Pair *const *)b;
    Py_ssize_t n = x->key.n < y->key.n ? x->key.n : y->key.n;
    int order = memcmp(x->key.p, y->key.p, (size_t)n);
    if (order != 0) {
        return order;
    }
    return x->key.n < y->key.n ? -1 : x->key.n > y->key.n;
}

/* Python's sort of the parts by id (code point order is byte order for
 * ASCII), stable by index. */
static int
compare_read_parts(const void *a, const void *b)
{
    const Part *x = a, *y = b;
    Py_ssize_t n = x->span.n < y->span.n ? x->span.n : y->span.n;
    int order = n ? memcmp(x->span.p, y->span.p, (size_t)n) : 0;
    if (order == 0 && x->span.n != y->span.n) {
        order = x->span.n < y->span.n ? -1 : 1;
    }
    if (order != 0) {
        return order;
    }
    return x->index < y->index ? -1 : x->index > y->index;
}

/* The str of an attribute's key or value: plain text here, any other by
 * the decoder itself (escapes, UTF-8), or GIVE_UP where it refuses it. */
static int
text_of(Span s, int plain, PyObject **out)
{
    if (plain) {
        *out = span_str(s);
        return *out == NULL ? -1 : 0;
    }
    /* The string with its quotes, which read_string found around it. */
    PyObject *quoted = PyBytes_FromStringAndSize(s.p - 1, s.n + 2);
    if (quoted == NULL) {
        return -1;
    }
    *out = PyObject_CallOneArg(decode_text, quoted);
    Py_DECREF(quoted);
    if (*out == NULL) {
        if (PyErr_ExceptionMatches(PyExc_MemoryError)) {
            return -1;
        }
        PyErr_Clear();
        return GIVE_UP;
    }
    if (!PyUnicode_CheckExact(*out)) {
        Py_CLEAR(*out);
        return GIVE_UP;
    }
    return 0;
}

/* sorted(attributes.items()), from a non-empty dict's pairs. Plain text
 * with no key twice is sorted and written here; any other goes through a
 * dict of the decoded text, as the decoder builds it (the last of a key
 * twice wins), and the walk's own writer. */
static int
write_read_attributes(Reading *w, Buffer *b, const Value *attributes)
{
    Py_ssize_t count = attributes->u.pairs.count;
    if (count > w->pairs_capacity) {
        Pair **pairs = PyMem_Realloc(w->pairs, (size_t)count * sizeof(Pair *));
        if (pairs == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        w->pairs = pairs;
        w->pairs_capacity = count;
    }
    Py_ssize_t n = 0;
    int plain = 1;
    for (Pair *pair = attributes->u.pairs.first; pair != NULL; pair = pair->next) {
        plain = plain && pair->plain_key && pair->plain_value;
        w->pairs[n++] = pair;
    }
    if (plain) {
        qsort(w->pairs, (size_t)n, sizeof(Pair *), compare_pairs);
        for (Py_ssize_t i = 1; plain && i < n; i++) {
            plain = compare_pairs(&w->pairs[i - 1], &w->pairs[i]) != 0;
        }
    }
    if (plain) {
        if (buffer_char(b, '[') < 0) {
            return -1;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            if ((i > 0 && buffer_char(b, ',') < 0) || buffer_char(b, '[') < 0 ||
                write_quoted(b, w->pairs[i]->key) < 0 || buffer_char(b, ',') < 0 ||
                write_quoted(b, w->pairs[i]->value) < 0 || buffer_char(b, ']') < 0) {
                return -1;
            }
        }
        return buffer_char(b, ']');
    }
    PyObject *dict = PyDict_New();
    if (dict == NULL) {
        return -1;
    }
    int status = 0;
    for (Pair *pair = attributes->u.pairs.first; status == 0 && pair != NULL; pair = pair->next) {
        PyObject *key = NULL, *value = NULL;
        if ((status = text_of(pair->key, pair->plain_key, &key)) == 0 &&
            (status = text_of(pair->value, pair->plain_value, &value)) == 0) {
            status = PyDict_SetItem(dict, key, value);
        }
        Py_XDECREF(key);
        Py_XDECREF(value);
    }
    if (status == 0) {
        status = write_attributes(b, dict);
    }
    Py_DECREF(dict);
    return status;
}

/* [id or "", purpose, user id, queue id, wrapup code, sorted attributes or
 * null, [communications]]. */
static int
add_read_part(Reading *w, Node *p, const Value *user_id, const Value *queue_id)
{
    const Value *id = &p->f[P_ID];
    Span part_id = {"", 0};
    if (id->present) {
        part_id = id->u.s;
    }
    Part *part = parts_begin(&w->parts);
    if (part == NULL) {
        return -1;
    }
    part->span = part_id;
    Buffer *b = &w->parts.json;
    if (buffer_char(b, '[') < 0 || write_quoted(b, part_id) < 0 || buffer_char(b, ',') < 0 ||
        write_read(b, F_STR, &p->f[P_PURPOSE]) < 0 || buffer_char(b, ',') < 0 ||
        write_read(b, F_STR, user_id) < 0 || buffer_char(b, ',') < 0 ||
        write_read(b, F_STR, queue_id) < 0 || buffer_char(b, ',') < 0 ||
        write_read(b, F_STR, sub(&p->f[P_WRAPUP], W_CODE)) < 0 || buffer_char(b, ',') < 0) {
        return -1;
    }
    const Value *attributes = &p->f[P_ATTRIBUTES];
    int status = 0;
    if (attributes->present && attributes->u.pairs.count > 0) {
        status = write_read_attributes(w, b, attributes);
    }
    else if (buffer_write(b, "null", 4) < 0) {
        return -1;
    }
    if (status != 0) {
        return status;
    }
    return parts_end(&w->parts, &w->comms);
}

/* One participant, as the loop body of snapshot._walk. */
static int
read_participant(Reading *w, Node *p, PyObject *media, int *acd_connected, int *agent_connected,
                 int *active, int *monitoring)
{
    int connected = 0;
    w->comms.size = 0;
    w->comm_count = 0;
    const Value *state = &p->f[P_STATE];
    if (state->present) {
        /* A media participant: it is its one communication, of the topic's media. */
        connected = span_is(state, "connected", 9);
        if (media != Py_None) {
            PyObject *bucket;
            if (bucket_list(w, media, &bucket) < 0 ||
                add_text(PyList_Append, bucket, state->u.s) < 0) {
                return -1;
            }
        }
        if (p->f[P_TYPE].present && add_text(PySet_Add, w->message_types, p->f[P_TYPE].u.s) < 0) {
            return -1;
        }
        if (add_read_comm(w, media, p, participant_types, P_STATE, &p->f[P_MESSAGES],
                          C_MESSAGE_ID, &p->f[P_CALLBACK_SCHEDULED_TIME]) < 0) {
            return -1;
        }
    }
    else {
        for (int i = 0; i < MEDIA_LISTS; i++) {
            const Value *list = &p->f[P_CALLS + i];
            if (list->present && list->u.list.total > 0 &&
                read_communications(w, media_names[i], list, &connected,
                                    P_CALLS + i == P_MESSAGES) < 0) {
                return -1;
            }
        }
    }
    read_stamp(w, &p->f[P_CONNECTED_TIME]);
    read_stamp(w, &p->f[P_END_TIME]);
    read_stamp(w, &p->f[P_START_ACW_TIME]);
    read_stamp(w, &p->f[P_END_ACW_TIME]);
    read_stamp(w, sub(&p->f[P_WRAPUP], W_END_TIME));
    const Value *purpose = &p->f[P_PURPOSE];
    const Value *user_id = &p->f[P_USER_ID];
    if (!user_id->present) {
        user_id = sub(&p->f[P_USER], R_ID);
    }
    const Value *queue_id = &p->f[P_QUEUE_ID];
    if (!queue_id->present) {
        queue_id = sub(&p->f[P_QUEUE], R_ID);
    }
    if (user_id->present && user_id->u.s.n > 0 &&
        add_text(PySet_Add, w->user_ids, user_id->u.s) < 0) {
        return -1;
    }
    int is_acd = span_is(purpose, "acd", 3);
    int is_agent = span_is(purpose, "agent", 5);
    if (queue_id->present && queue_id->u.s.n > 0 && (is_acd || is_agent) &&
        add_text(PySet_Add, w->queue_ids, queue_id->u.s) < 0) {
        return -1;
    }
    if (connected) {
        if (is_acd) {
            *acd_connected = 1;
        }
        else if (is_agent) {
            *agent_connected = *active = 1;
        }
        else if (span_is(purpose, "user", 4)) {
            *active = 1;
        }
        const Value *monitored = &p->f[P_MONITORED_PARTICIPANT_ID];
        if (monitored->present && monitored->u.s.n > 0) {
            *monitoring = 1;
        }
    }
    return w->comm_count > 0 ? add_read_part(w, p, user_id, queue_id) : 0;
}

/* Microseconds as Unix seconds, as datetime.timestamp() gives them: the
 * integer divided once, correctly rounded. Below 2**53 both are exact as
 * doubles and one division rounds once; beyond (past the year 2255, or
 * before 1685) the conversion would round first, so Python's integers
 * divide. */
static PyObject *
seconds_of(int64_t us)
{
    const int64_t exact = (int64_t)1 << 53;
    if (us > -exact && us < exact) {
        return PyFloat_FromDouble((double)us / 1e6);
    }
    PyObject *numerator = PyLong_FromLongLong(us), *denominator = PyLong_FromLong(1000000);
    PyObject *seconds = NULL;
    if (numerator != NULL && denominator != NULL) {
        seconds = PyNumber_TrueDivide(numerator, denominator);
    }
    Py_XDECREF(numerator);
    Py_XDECREF(denominator);
    return seconds;
}

PyDoc_STRVAR(read_doc,
"read(body, media, /)\n--\n\n"
"snapshot._conversation_facts, compiled, from the body's bytes: the same\n"
"ConversationFacts, or None where it is not sure to be the same (the caller\n"
"then decodes and walks).");

static PyObject *
read_facts(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (!takes("read", 2, nargs)) {
        return NULL;
    }
    if (facts_type == NULL || encode_value == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "read() before bind_reader() and bind_digest()");
        return NULL;
    }
    PyObject *body = args[0], *media = args[1];
    if (!PyBytes_CheckExact(body) || (media != Py_None && !PyUnicode_CheckExact(media))) {
        Py_RETURN_NONE;
    }
    uint64_t first_block[2048]; /* 16 KB, aligned for the nodes */
    Reader r = {
        (const unsigned char *)PyBytes_AS_STRING(body),
        (const unsigned char *)PyBytes_AS_STRING(body) + PyBytes_GET_SIZE(body),
        0,
        {(char *)first_block, (char *)first_block + sizeof(first_block), NULL},
    };
    Reading w = {0};
    PyObject *result = NULL, *names = NULL, *version = NULL, *digest = NULL, *id = NULL;
    Node *conversation = NULL;
    int acd_connected = 0, agent_connected = 0, active = 0, monitoring = 0;
    Span conversation_id;
    int status;
    skip_space(&r);
    if (r.p >= r.end || *r.p != '{') {
        status = GIVE_UP;
    }
    else {
        status = read_object(&r, K_CONVERSATION, &conversation);
    }
    if (status == 0) {
        skip_space(&r);
        const Value *id_value = &conversation->f[V_ID];
        if (r.p != r.end || !id_value->present || id_value->u.s.n == 0) {
            status = GIVE_UP;
        }
    }
    if (status != 0) {
        goto done;
    }
    if ((w.states = PyDict_New()) == NULL || (w.message_types = PyFrozenSet_New(NULL)) == NULL ||
        (w.queue_ids = PyFrozenSet_New(NULL)) == NULL ||
        (w.user_ids = PyFrozenSet_New(NULL)) == NULL) {
        status = -1;
        goto done;
    }
    if (conversation->f[V_PARTICIPANTS].present) {
        Node *first = conversation->f[V_PARTICIPANTS].u.list.first;
        for (Node *p = first; p != NULL && status == 0; p = p->next) {
            status = read_participant(&w, p, media, &acd_connected, &agent_connected, &active,
                                      &monitoring);
        }
    }
    if (status != 0) {
        goto done;
    }
    conversation_id = conversation->f[V_ID].u.s;
    if (freeze_states(w.states) < 0 || (names = PyFrozenSet_New(w.states)) == NULL ||
        (version = seconds_of(w.have_newest ? w.newest : 0)) == NULL ||
        (id = span_str(conversation_id)) == NULL ||
        (digest = parts_digest(&w.parts, compare_read_parts, id, version)) == NULL) {
        status = -1;
        goto done;
    }
    {
        PyObject *fields[11] = {
            id, names, w.states, w.message_types, w.queue_ids, w.user_ids,
            acd_connected && !agent_connected ? Py_True : Py_False,
            active ? Py_True : Py_False, monitoring ? Py_True : Py_False, version, digest,
        };
        result = PyObject_Vectorcall(facts_type, fields, 11, NULL);
    }
done:
    if (status == GIVE_UP && !PyErr_Occurred()) {
        result = Py_NewRef(Py_None);
    }
    while (r.depth > 0) {
        leave(&r); /* the levels a read that gave up was inside */
    }
    arena_free(&r.arena);
    Py_XDECREF(id);
    Py_XDECREF(names);
    Py_XDECREF(version);
    Py_XDECREF(digest);
    Py_XDECREF(w.states);
    Py_XDECREF(w.message_types);
    Py_XDECREF(w.queue_ids);
    Py_XDECREF(w.user_ids);
    PyMem_Free(w.comms.data);
    parts_free(&w.parts);
    PyMem_Free(w.pairs);
    return result;
}

/* Each field's JSON name, from the struct's own definition (its rename). */
static int
bind_schema(Schema *schema, PyObject *type, const char *const *names, const unsigned char *types,
            int count)
{
    PyObject *fields = PyObject_GetAttrString(type, "__struct_fields__");
    PyObject *encoded = fields ? PyObject_GetAttrString(type, "__struct_encode_fields__") : NULL;
    int status = -1;
    if (encoded == NULL) {
        goto done;
    }
    if (!PyTuple_CheckExact(fields) || !PyTuple_CheckExact(encoded) ||
        PyTuple_GET_SIZE(fields) != count || PyTuple_GET_SIZE(encoded) != count) {
        PyErr_Format(PyExc_TypeError, "%R has not the %d fields the reader reads", type, count);
        goto done;
    }
    schema->count = count;
    schema->types = types;
    memset(schema->slots, -1, sizeof(schema->slots));
    for (int i = 0; i < count; i++) {
        int found = -1;
        for (int j = 0; j < count; j++) {
            PyObject *name = PyTuple_GET_ITEM(fields, j);
            if (PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, names[i]) == 0) {
                found = j;
                break;
            }
        }
        PyObject *key = found < 0 ? NULL : PyTuple_GET_ITEM(encoded, found);
        if (key == NULL || !PyUnicode_Check(key) || !PyUnicode_IS_ASCII(key) ||
            PyUnicode_GET_LENGTH(key) >= MAX_KEY) {
            PyErr_Format(PyExc_TypeError, "%R.%s is not a field the reader can read", type,
                         names[i]);
            goto done;
        }
        Py_ssize_t n = PyUnicode_GET_LENGTH(key);
        if (n == 0) {
            PyErr_Format(PyExc_TypeError, "%R.%s has an empty JSON name", type, names[i]);
            goto done;
        }
        schema->lengths[i] = (unsigned char)n;
        memcpy(schema->keys[i], PyUnicode_1BYTE_DATA(key), (size_t)n);
        unsigned int slot = key_slot(schema->keys[i], n);
        while (schema->slots[slot] >= 0) {
            slot = (slot + 1) % KEY_SLOTS;
        }
        schema->slots[slot] = (signed char)i;
    }
    status = 0;
done:
    Py_XDECREF(fields);
    Py_XDECREF(encoded);
    return status;
}

PyDoc_STRVAR(bind_reader_doc,
"bind_reader(conversation, facts, decode_text, /)\n--\n\n"
"Learn the JSON names of the snapshot structs' fields (after bind()), the\n"
"type read() returns, and the decoder of a JSON string it hands the\n"
"attributes' text with escapes or beyond ASCII. Raises TypeError when a\n"
"struct has other fields than the reader reads.");

static PyObject *
bind_reader(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (!takes("bind_reader", 3, nargs)) {
        return NULL;
    }
    if (!bound) {
        PyErr_SetString(PyExc_RuntimeError, "bind_reader() before bind()");
        return NULL;
    }
    if (!PyType_Check(args[0]) || !PyCallable_Check(args[1]) || !PyCallable_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError,
                        "bind_reader() expects a struct type and two callables");
        return NULL;
    }
    Schema bound_schemas[KINDS];
    PyObject *types[KINDS] = {args[0], (PyObject *)participant.type,
                              (PyObject *)communication.type, (PyObject *)detail.type,
                              (PyObject *)ref.type, (PyObject *)wrapup.type,
                              (PyObject *)after_call_work.type};
    const char *const *names[KINDS] = {conversation_fields, participant_fields,
                                       communication_fields, detail_fields, ref_fields,
                                       wrapup_fields, after_call_work_fields};
    const unsigned char *field_types[KINDS] = {conversation_types, participant_types,
                                               communication_types, detail_types, ref_types,
                                               wrapup_types, after_call_work_types};
    const int counts[KINDS] = {V_COUNT, P_COUNT, C_COUNT, D_COUNT, R_COUNT, W_COUNT, A_COUNT};
    for (int i = 0; i < KINDS; i++) {
        if (bind_schema(&bound_schemas[i], types[i], names[i], field_types[i], counts[i]) < 0) {
            return NULL;
        }
    }
    memcpy(schemas, bound_schemas, sizeof(schemas));
    Py_XSETREF(facts_type, Py_NewRef(args[1]));
    Py_XSETREF(decode_text, Py_NewRef(args[2]));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"bind", (PyCFunction)(void (*)(void))bind, METH_FASTCALL, bind_doc},
    {"bind_digest", (PyCFunction)(void (*)(void))bind_digest, METH_FASTCALL, bind_digest_doc},
    {"walk", (PyCFunction)(void (*)(void))walk, METH_FASTCALL, walk_doc},
    {"bind_split", (PyCFunction)(void (*)(void))bind_split, METH_FASTCALL, bind_split_doc},
    {"split", (PyCFunction)split, METH_O, split_doc},
    {"is_utf8", (PyCFunction)utf8_check, METH_O, utf8_doc},
    {"bind_reader", (PyCFunction)(void (*)(void))bind_reader, METH_FASTCALL, bind_reader_doc},
    {"read", (PyCFunction)(void (*)(void))read_facts, METH_FASTCALL, read_doc},
    {"sha256", (PyCFunction)sha256_bytes, METH_O, sha256_doc},
    {"use_sha_instructions", (PyCFunction)use_sha_instructions, METH_O,
     use_sha_instructions_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT,
    "genesys_mux.core._speedups",
    "The snapshot walk and the notification split, compiled (optional).",
    -1,
    methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if ((str_connected = PyUnicode_InternFromString("connected")) == NULL ||
        (str_acd = PyUnicode_InternFromString("acd")) == NULL ||
        (str_agent = PyUnicode_InternFromString("agent")) == NULL ||
        (str_user = PyUnicode_InternFromString("user")) == NULL ||
        (str_empty = PyUnicode_InternFromString("")) == NULL ||
        (str_timestamp = PyUnicode_InternFromString("timestamp")) == NULL ||
        (str_digest = PyUnicode_InternFromString("digest")) == NULL) {
        return NULL;
    }
    init_string_stops();
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) {
        return NULL;
    }
#ifdef SHA_INSTRUCTIONS_BUILT
    own_sha256 = cpu_has_sha_instructions();
#endif
    return PyModule_Create(&module_def);
}
