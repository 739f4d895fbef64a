// ent_ckpt.h: HDF5 checkpoints, layout v1 (docs/checkpoint.md).
//
// A checkpoint is one HDF5 file: attributes on the root group (format, version,
// step, data cursor, configuration, model shape, ...), and one float32
// dataset per parameter-table row at its global shape in /params, /adam_m and
// /adam_v, chunked, with a Fletcher32 checksum on every chunk. It is written
// collectively with parallel HDF5 (each rank writes only its share), appears
// under its name only once complete, and any number of ranks in any layout
// can read any part of it back.
#ifndef ENT_CKPT_H
#define ENT_CKPT_H

#include "ent_comm.h"
#include "ent_kernels.h"

#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

#define ENT_CKPT_FORMAT "entente-checkpoint"
#define ENT_CKPT_VERSION 1

// ---------------------------------------------------------------------------
// attributes: named scalars and texts on the root group

typedef enum { ENT_ATTR_I64, ENT_ATTR_U64, ENT_ATTR_F64, ENT_ATTR_STR } ent_attr_type;

typedef struct {
    const char *name;
    ent_attr_type type;
    int64_t i;
    uint64_t u;
    double f;
    const char *s;
} ent_ckpt_attr;

// ---------------------------------------------------------------------------
// what one rank holds

// A coalition's state at a site or at the coordinator: the anchor weights
// (theta_anchor), the outer optimizer's momentum and the error-feedback
// residual of what it sends, each laid out as the parameter arena (this
// rank's part; NULL: not held), the round, and the ledger (text; NULL: none).
typedef struct {
    float *anchor, *outer_momentum, *residual;
    int64_t round;
    const char *ledger;
} ent_ckpt_coalition;

typedef struct {
    const ent_param_table *table; // this rank's table: global and local shapes, offsets
    int tp_rank, tp_size;
    float *params;                // the local parameter arena
    float *adam_m, *adam_v;       // AdamW moments of arena range [state_first, +state_count); NULL: none
    size_t state_first, state_count;
    // writing: the arena range this rank writes (its share; rows replicated
    // across TP ranks are written by TP rank 0 only)
    size_t write_first, write_count;
    // reading: the ranks holding the same parameters as this one (its DP
    // group), which then share the reading; NULL: this rank reads all it needs
    ent_group_t *replicas;
    // the coalition's state, written to (or read from) group /coalition when
    // set; NULL: none (not part of a coalition)
    const ent_ckpt_coalition *coalition;
} ent_ckpt_shard;

// Initialises HDF5 before MPI starts: call once, before ent_comm_init. HDF5
// then never tears itself down at MPI_Finalize or exit: after a write that
// failed (a full disk), HDF5 1.10 crashes when it closes the damaged file a
// second time, which its automatic clean-up would do.
void ent_ckpt_library_init(void);

// ---------------------------------------------------------------------------
// saving

typedef struct ent_ckpt_saver ent_ckpt_saver_t;

typedef struct {
    const char *dir;     // checkpoint directory (created if missing)
    int keep;            // keep this many newest checkpoints of this run (0: all)
    int async;           // write from a background thread (needs MPI_THREAD_MULTIPLE)
    int adopt;           // the checkpoints already in dir are this run's (it resumed
                         // from one of them); otherwise retention removes only the
                         // checkpoints this saver wrote
} ent_ckpt_saver_opts;

// A saver for the ranks of `world` (collective). The caller owns it.
ent_status ent_ckpt_saver_new(ent_group_t *world, const ent_ckpt_saver_opts *opts,
                              ent_ckpt_saver_t **out);
// Asynchronous saver: allocates and touches the host snapshot for this shard
// now (outside the training loop), so that no save waits for fresh pages.
// A no-op for a synchronous saver.
ent_status ent_ckpt_saver_prepare(ent_ckpt_saver_t *saver, const ent_ckpt_shard *shard);
// Before the first save (collective): rank 0 creates the directory, writes a
// small file there and checks that the file system has room for a checkpoint
// of this shard's table (parameters and moments, float32, plus HDF5's
// metadata; ENTENTE_CKPT_SKIP_SPACE_CHECK=1 skips the room check), then every
// rank checks that it can write into the directory. Every rank returns the
// same status (ENT_ERR_IO naming the directory).
ent_status ent_ckpt_saver_check(ent_ckpt_saver_t *saver, const ent_ckpt_shard *shard);
// Finishes a save in flight, then frees the saver.
void ent_ckpt_saver_free(ent_ckpt_saver_t **saver);
// Saves DIR/NAME collectively: every rank writes its share into NAME.tmp, then
// rank 0 syncs it, renames it to NAME, syncs the directory, points DIR/latest
// at it and removes this run's checkpoints beyond `keep`. Synchronous: returns when the
// checkpoint is committed. Asynchronous: waits for the previous save and
// returns; a background thread copies the shard to the host snapshot, then
// writes and commits it. The shard's arrays may be read meanwhile (the next
// step's forward and backward) but not written until ent_ckpt_wait_staged
// returns (call it before the optimizer update). Every rank returns the same
// status.
ent_status ent_ckpt_save(ent_ckpt_saver_t *saver, const char *name, const ent_ckpt_attr *attrs,
                         int nattrs, const ent_ckpt_shard *shard);
// Waits until an asynchronous save in flight has copied the shard (at once if
// none, or for a synchronous saver); the wait counts as blocked time.
void ent_ckpt_wait_staged(ent_ckpt_saver_t *saver);
// Waits for an asynchronous save in flight; its status (ENT_OK if none).
ent_status ent_ckpt_wait(ent_ckpt_saver_t *saver);
// Seconds the caller was blocked by the last ent_ckpt_save and the
// ent_ckpt_wait_staged after it.
double ent_ckpt_last_blocked_seconds(const ent_ckpt_saver_t *saver);

// The file name of the checkpoint of a step: "step_00001234.h5".
void ent_ckpt_name(int64_t step, char *buf, size_t n);
// The steps of the checkpoints in dir (files step_NNNNNNNN.h5), ascending, in
// *steps (malloc'ed, the caller frees it; NULL when none); returns how many (0
// also when dir cannot be read).
int ent_ckpt_list_steps(const char *dir, int64_t **steps);
// Resolves "DIR/latest" (or a file path) to the checkpoint file it names.
ent_status ent_ckpt_resolve_latest(const char *dir, char *out, size_t n);

// ---------------------------------------------------------------------------
// loading

typedef struct ent_ckpt ent_ckpt_t;

// Opens a checkpoint for reading: collectively by the ranks of world (each
// opens it on its own; every rank gets the same status), or by this process
// alone (world NULL). Checks format and version, that the file's metadata is
// checksummed (HDF5 superblock 3 or later) and the metadata digest over its
// attributes (docs/checkpoint.md). Caller owns it.
ent_status ent_ckpt_open(const char *path, ent_group_t *world, ent_ckpt_t **out);
void ent_ckpt_close(ent_ckpt_t **ck);
const char *ent_ckpt_path(const ent_ckpt_t *ck);
// Root attributes; ENT_ERR_INPUT naming the attribute when missing or of
// another type. A text is copied into buf (n bytes) or malloc'ed (*text).
ent_status ent_ckpt_attr_i64(ent_ckpt_t *ck, const char *name, int64_t *v);
ent_status ent_ckpt_attr_u64(ent_ckpt_t *ck, const char *name, uint64_t *v);
ent_status ent_ckpt_attr_text(ent_ckpt_t *ck, const char *name, char **text);
// Whether the root group holds the attribute name.
int ent_ckpt_has_attr(ent_ckpt_t *ck, const char *name);
int ent_ckpt_has_moments(ent_ckpt_t *ck);
// Whether the file holds coalition state (group /coalition), and its round
// and ledger (*ledger malloc'ed; "" when none was written).
int ent_ckpt_has_coalition(ent_ckpt_t *ck);
ent_status ent_ckpt_coalition_info(ent_ckpt_t *ck, int64_t *round, char **ledger);
// Reads this rank's part of every row (params whole, moments over the state
// range when shard->adam_m is set, the coalition's arrays that
// shard->coalition holds), collectively when opened by a group (with
// shard->replicas, a subgroup of it, sharing the reading). The file must
// pass ent_ckpt_check_layout against the shard's table (its global shapes);
// a failed checksum names the dataset.
ent_status ent_ckpt_read(ent_ckpt_t *ck, const ent_ckpt_shard *shard);
// Reads one whole dataset ("params/wte.weight"); *data is malloc'ed.
ent_status ent_ckpt_read_dataset(ent_ckpt_t *ck, const char *name, float **data,
                                 int64_t shape[2], int *ndim);

// ---------------------------------------------------------------------------
// tools (one process)

// `entente ckpt info`: step, tokens, model, sizes, creation, layout summary.
ent_status ent_ckpt_info(const char *path, FILE *out);

// What a checkpoint must hold. Its attributes mean what the program that
// wrote them says (entente's runtime: a training state and the configuration
// it was trained with), so that program checks them: every attribute it
// relies on, in range and consistent with the others, or a failure
// (ENT_ERR_INPUT) naming the file, the attribute and the accepted range.
// Then it fills *table (the caller frees it: ent_param_table_free) with the
// rows every dataset group must hold, at their global shapes.
typedef ent_status (*ent_ckpt_expect_fn)(ent_ckpt_t *ck, void *ctx, ent_param_table *table);
// Checks the file's objects against the table (ent_ckpt_read does it first
// too): attribute `tensors` equal to its row count; /params, and /adam_m with
// /adam_v or neither, each holding exactly one dataset per row, of exactly
// IEEE float32 little-endian at the row's global shape (1-D or 2-D),
// chunked with Fletcher32 and indexed by one of HDF5 1.10's checksummed
// chunk indexes; /coalition as documented; nothing else; every object
// header checksummed. The first difference, naming the dataset.
ent_status ent_ckpt_check_layout(ent_ckpt_t *ck, const ent_param_table *table);
// `entente ckpt verify`: opens the file (format, version, metadata digest),
// checks what `expect` says of its attributes and the layout against the
// table it gives, then reads every dataset (checksums) and checks its values
// (no NaN/Inf); a failure names the attribute or dataset.
ent_status ent_ckpt_verify(const char *path, ent_ckpt_expect_fn expect, void *ctx, FILE *out);
// `entente ckpt export --format safetensors`: DIR/model.safetensors (the
// parameters under the table's names, Hugging Face's; the rows vocab_rows
// names cut to model.vocab; the tensors transposed names transposed) and
// DIR/config.json (config_json, which the caller writes for the architecture).
typedef struct {
    const char *config_json;
    int (*transposed)(const char *name);
    int (*vocab_rows)(const char *name);
} ent_ckpt_export;
ent_status ent_ckpt_export_safetensors(const char *path, const char *outdir,
                                       const ent_ckpt_export *how, FILE *out);

// ---------------------------------------------------------------------------
// safetensors: a Hugging Face model directory's tensors, read (safetensors.c)

enum { ENT_ST_MAX_DIMS = 8, ENT_ST_NAME_MAX = 256 };
typedef struct {
    char name[ENT_ST_NAME_MAX];
    ent_dtype dtype; // ENT_F32, ENT_BF16 or ENT_F16
    int ndim;
    int64_t shape[ENT_ST_MAX_DIMS];
    size_t numel;
    const char *file; // the file that holds it
    uint64_t at;      // where its bytes start in that file
} ent_st_tensor;
typedef struct ent_st ent_st_t;
// Opens DIR/model.safetensors, or else every shard DIR/model.safetensors.index.json
// names, and checks every header entry against its file, the other tensors
// and the index (ENT_ERR_INPUT naming the file and the tensor).
ent_status ent_st_open(const char *dir, ent_st_t **out);
int ent_st_count(const ent_st_t *st);
const ent_st_tensor *ent_st_get(const ent_st_t *st, int i);
const ent_st_tensor *ent_st_find(const ent_st_t *st, const char *name); // NULL: none
// Reads a tensor into dst (numel floats), converted to float32; transpose:
// a [rows, cols] matrix lands as [cols, rows].
ent_status ent_st_read(ent_st_t *st, const ent_st_tensor *t, float *dst, int transpose);
// The n tensors of order will be read next, in that order (best in file
// order), order[i] into dst[i] (dst may be NULL): a thread reads them ahead
// of ent_st_read into the page cache, at most 256 MiB ahead, so that the
// disk streams while tensors are widened and transposed, and puts the memory
// at each dst[i] in place before its tensor is read (ent_populate_big). A
// hint, once per st: reads in another order stay correct.
void ent_st_stream(ent_st_t *st, const ent_st_tensor *const *order, float *const *dst, int n);
void ent_st_close(ent_st_t **st);
// Parses the JSON object in a file of at most max bytes (config.json) into
// *json, a cJSON object the caller frees with cJSON_Delete.
ent_status ent_st_read_json(const char *path, size_t max, void **json);

#ifdef __cplusplus
}
#endif

#endif // ENT_CKPT_H
