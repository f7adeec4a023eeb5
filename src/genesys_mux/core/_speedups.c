/*
 * Two hot loops of the pipeline, compiled: the participant walk of
 * genesys_mux.core.snapshot, and the notification split of
 * genesys_mux.core.frames (at the end of this file).
 *
 * snapshot._walk (Python) is the walk's specification: walk() here must
 * return a value equal to it for every input, and tests/core/test_speedups.py
 * holds the two to that. The typed decode stays in Python, and so does the
 * state digest's encoder, which the walk calls (bind_digest()); the digest's
 * SHA-256 is computed here with the CPU's SHA instructions where it has
 * them, and by the bound hash (hashlib's) where it has not.
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

#ifndef Py_T_OBJECT_EX
#define Py_T_OBJECT_EX T_OBJECT_EX
#endif
#ifndef Py_T_OBJECT
#define Py_T_OBJECT T_OBJECT
#endif

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

/* A participant's digest part in Walk.parts, and the id it is sorted by. */
typedef struct {
    PyObject *id; /* borrowed exact str */
    Py_ssize_t start, length, index;
} Part;

/* Everything the walk gathers (snapshot._walk's locals). */
typedef struct {
    PyObject *states;        /* dict[str, list[str]], tuples once done */
    PyObject *newest;        /* borrowed datetime or NULL */
    PyObject *message_types; /* frozenset[str], filled while only the walk holds it */
    PyObject *queue_ids;     /* frozenset[str], likewise */
    PyObject *user_ids;      /* frozenset[str], likewise */
    Buffer comms;            /* the current participant's communications' JSON */
    Py_ssize_t comm_count;
    Buffer parts;            /* the digest parts' JSON, one after another */
    Part *part_index;
    Py_ssize_t part_count, part_capacity;
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
    if (w->part_count == w->part_capacity) {
        Py_ssize_t capacity = w->part_capacity ? 2 * w->part_capacity : 8;
        Part *index = PyMem_Realloc(w->part_index, (size_t)capacity * sizeof(Part));
        if (index == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        w->part_index = index;
        w->part_capacity = capacity;
    }
    Buffer *b = &w->parts;
    Py_ssize_t start = b->size;
    if (buffer_char(b, '[') < 0 || write_value(b, id) < 0 || buffer_char(b, ',') < 0 ||
        write_value(b, purpose) < 0 || buffer_char(b, ',') < 0 || write_value(b, user_id) < 0 ||
        buffer_char(b, ',') < 0 || write_value(b, queue_id) < 0 || buffer_char(b, ',') < 0 ||
        write_value(b, code) < 0 || buffer_char(b, ',') < 0) {
        return -1;
    }
    if (truthy) {
        /* sorted(attributes.items()): the keys differ, so only they are compared. */
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
        if (failed || buffer_char(b, ']') < 0) {
            return -1;
        }
    }
    else if (buffer_write(b, "null", 4) < 0) {
        return -1;
    }
    if (buffer_write(b, ",[", 2) < 0 || buffer_write(b, w->comms.data, w->comms.size) < 0 ||
        buffer_write(b, "]]", 2) < 0) {
        return -1;
    }
    w->part_index[w->part_count] = (Part){id, start, b->size - start, w->part_count};
    w->part_count++;
    return 0;
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

/* The 16-byte state digest: SHA-256 of [conversation id, version, [parts by id]]. */
static PyObject *
state_digest(Walk *w, PyObject *conversation_id, PyObject *version)
{
    Buffer out = {0};
    PyObject *encoded = NULL, *hash = NULL, *full = NULL, *result = NULL;
    if (w->part_count > 1) {
        qsort(w->part_index, (size_t)w->part_count, sizeof(Part), compare_parts);
    }
    if (buffer_reserve(&out, w->parts.size + 128) < 0 || buffer_char(&out, '[') < 0 ||
        write_value(&out, conversation_id) < 0 || buffer_char(&out, ',') < 0 ||
        write_value(&out, version) < 0 || buffer_write(&out, ",[", 2) < 0) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < w->part_count; i++) {
        const Part *part = &w->part_index[i];
        if ((i > 0 && buffer_char(&out, ',') < 0) ||
            buffer_write(&out, w->parts.data + part->start, part->length) < 0) {
            goto done;
        }
    }
    if (buffer_write(&out, "]]", 2) < 0) {
        goto done;
    }
#ifdef SHA_INSTRUCTIONS_BUILT
    if (own_sha256) {
        unsigned char full_digest[32];
        sha256_own((const unsigned char *)out.data, (size_t)out.size, full_digest);
        result = PyBytes_FromStringAndSize((const char *)full_digest, DIGEST_SIZE);
        goto done;
    }
#endif
    if ((encoded = PyBytes_FromStringAndSize(out.data, out.size)) == NULL ||
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
    PyMem_Free(out.data);
    Py_XDECREF(encoded);
    Py_XDECREF(hash);
    Py_XDECREF(full);
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
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "walk() takes 3 arguments (%zd given)", nargs);
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
    if (version == NULL || (digest = state_digest(&w, conversation_id, version)) == NULL) {
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
    PyMem_Free(w.parts.data);
    PyMem_Free(w.part_index);
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
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "bind_digest() takes 2 arguments (%zd given)", nargs);
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
    if (nargs != 7) {
        PyErr_Format(PyExc_TypeError, "bind() takes 7 arguments (%zd given)", nargs);
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
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "bind_split() takes 2 arguments (%zd given)", nargs);
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

static PyMethodDef methods[] = {
    {"bind", (PyCFunction)(void (*)(void))bind, METH_FASTCALL, bind_doc},
    {"bind_digest", (PyCFunction)(void (*)(void))bind_digest, METH_FASTCALL, bind_digest_doc},
    {"walk", (PyCFunction)(void (*)(void))walk, METH_FASTCALL, walk_doc},
    {"bind_split", (PyCFunction)(void (*)(void))bind_split, METH_FASTCALL, bind_split_doc},
    {"split", (PyCFunction)split, METH_O, split_doc},
    {"is_utf8", (PyCFunction)utf8_check, METH_O, utf8_doc},
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
#ifdef SHA_INSTRUCTIONS_BUILT
    own_sha256 = cpu_has_sha_instructions();
#endif
    return PyModule_Create(&module_def);
}
