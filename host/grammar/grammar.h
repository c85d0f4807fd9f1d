/* grammar.h - JSON Schema -> token masks for constrained decoding.
 *
 * Three objects, all opaque:
 *
 *   grammar_vocab    the token vocabulary as byte strings plus a token trie,
 *                    built once per tokenizer.  Immutable after creation
 *                    except for its compiled-grammar cache, which is guarded
 *                    by a mutex.  Thread-safe.
 *   grammar          a compiled JSON Schema: one byte-level DFA per rule
 *                    (rules exist only where the schema recurses) and, for
 *                    every DFA state that consumes bytes, a precomputed token
 *                    decision table (accepted / rejected / context-dependent,
 *                    the adaptive token-mask cache of XGrammar).  Immutable
 *                    and reference counted: share it freely across threads.
 *   grammar_matcher  the decoding state of one sequence (a set of persistent
 *                    stacks).  NOT thread-safe: one matcher per sequence,
 *                    used by one thread at a time.
 *
 * Usage (one sequence):
 *
 *   grammar_vocab *v;    grammar_vocab_create(tok, &v);          // once
 *   grammar *g;          grammar_compile(v, schema, len, NULL, &g);
 *   grammar_matcher *m;  grammar_matcher_create(g, &m);
 *   uint32_t *mask = malloc(grammar_mask_words(v) * 4);
 *   for (;;) {
 *       grammar_matcher_fill_mask(m, mask);        // CPU, while the GPU runs
 *       sampler_sample(smp, logits, mask, &tok);
 *       grammar_matcher_accept(m, tok);
 *       if (grammar_matcher_is_done(m)) break;    // EOG taken or nothing can follow
 *   }
 *   grammar_matcher_free(m); grammar_free(g); ... grammar_vocab_free(v);
 *
 * Generated JSON is compact with ", " and ": " separators and no other
 * whitespace.  Mask layout is the sampler's: bit (id % 32) of word id / 32.
 * End-of-generation tokens are allowed exactly when the document is complete.
 *
 * Supported JSON Schema subset (anything else is PS_EUNSUPPORTED with a
 * detail naming the keyword, never silently ignored):
 *   type (string or list), const, enum (members written in the one layout
 *   below; minLength/maxLength, numeric bounds and minItems/maxItems beside
 *   them filter the members, other sibling keywords are refused), anyOf,
 *   oneOf (treated as anyOf: exclusivity is not enforced), allOf with one
 *   member, $ref to local JSON
 *   pointers ("#", "#/$defs/x", "#/definitions/x", ...), $defs/definitions;
 *   object: properties (emitted in schema order, optional ones skippable),
 *   required, additionalProperties (false / true / schema; absent = false
 *   unless GRAMMAR_OPT_LAX_OBJECTS; extra keys come after the declared ones
 *   and are any string but a declared name; where an extra key still spells
 *   the start of a declared name it takes no \u escape there);
 *   array: items, prefixItems, minItems, maxItems;
 *   string: minLength, maxLength, pattern (regex subset: literals, ., classes,
 *   \d \w \s, groups, |, * + ? {n,m}; no backreferences / lookaround;
 *   '^' / '$' only at the ends of a top-level branch, '$' the very end;
 *   '.' is any character but \n; \d \w \s are ASCII, and \D \W \S and
 *   negated classes holding a shorthand match no non-ASCII character and
 *   \s \S neither of U+001C..U+001F, so a match holds under both ECMA-262
 *   and Python's re), format (date: a calendar date, years 0001..9999;
 *   time, date-time: UTC 'Z' only; uuid: lower-case 8-4-4-4-12; email: a
 *   conservative subset; ipv4);
 *   integer / number: minimum, maximum, exclusiveMinimum, exclusiveMaximum
 *   (compared as decimals; a bounded number with a fraction has at most 15
 *   significant digits and no exponent); unbounded integers are capped at
 *   15 digits.
 *   Annotations (title, description, default, examples, $schema, $id,
 *   $comment, deprecated, readOnly, writeOnly) are ignored.  Without "type",
 *   a schema takes the types its keywords imply ({"minimum": 1} is a number;
 *   JSON Schema would let a string through).
 *   tests/e2e/test_grammar_differential.py checks all of this against the
 *   jsonschema package on random schemas.
 */
#ifndef PS_GRAMMAR_H
#define PS_GRAMMAR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "engine/scheduler.h"
#include "model/tokenizer.h"

typedef struct grammar_vocab   grammar_vocab;
typedef struct grammar         grammar;
typedef struct grammar_matcher grammar_matcher;

/* ---- vocabulary ---------------------------------------------------------- */

/* Build from a tokenizer (copies every token's bytes; `tok` may be freed
 * afterwards).  Control/unused/unknown tokens are never allowed; EOG tokens
 * (tokenizer_is_eog) are allowed only at the end of a document. */
int  grammar_vocab_create(const tokenizer *tok, grammar_vocab **out);

/* Build from raw pieces: pieces[i] of lens[i] bytes is token i; NULL or
 * empty pieces are never allowed.  eog[0..n_eog) are end-of-generation ids.
 * Copies everything. */
int  grammar_vocab_create_from_pieces(int32_t n_vocab, const char *const *pieces,
                                      const size_t *lens, const int32_t *eog, size_t n_eog,
                                      grammar_vocab **out);
/* Frees the vocab and its compile cache.  Every grammar compiled from it must
 * have been freed first.  NULL-safe. */
void grammar_vocab_free(grammar_vocab *v);
int32_t grammar_vocab_n_vocab(const grammar_vocab *v);
/* Number of uint32 words in a mask: (n_vocab + 31) / 32. */
size_t  grammar_mask_words(const grammar_vocab *v);
/* Bytes of token id as the vocabulary holds them (*len 0 for control /
 * unusable tokens; NULL outside the vocabulary).  Owned by v. */
const char *grammar_vocab_piece(const grammar_vocab *v, int32_t id, size_t *len);

/* ---- compiling ----------------------------------------------------------- */

enum {
    GRAMMAR_OPT_LAX_OBJECTS = 1u << 0, /* absent additionalProperties = true (JSON Schema default) */
    GRAMMAR_OPT_NO_CACHE    = 1u << 1, /* bypass the compiled-grammar cache (benchmarks) */
};

struct grammar_options {
    uint32_t flags;
    int32_t  max_states;     /* DFA states over all rules; 0 = 20000     */
    int32_t  max_nfa_nodes;  /* 0 = 200000                                */
    int32_t  max_compile_ms; /* wall-clock budget; 0 = 10000              */
    int32_t  max_docs;       /* documents in a row; 0 or 1 = one (below)  */
};

/* A sequence of documents (max_docs > 1; OpenAI parallel tool calls): the
 * output is 1 to max_docs documents of the schema, each one after the
 * first preceded by a single '\n' byte.  A document never holds a raw
 * '\n' (no whitespace but ", " and ": "; strings escape it), so every '\n'
 * is a separator: the matcher counts them, and once max_docs documents
 * have started no token holding one is allowed (the last document may only
 * end).  can_end holds after each complete document; is_done when the last
 * allowed document is complete and only a separator could follow.  At most
 * GRAMMAR_MAX_DOCS. */
#define GRAMMAR_MAX_DOCS 1024

/* Compile a JSON Schema (text of `len` bytes) for vocab `v`.  Results are
 * cached in `v` by (schema hash, options): compiling the same schema twice
 * returns the same grammar with its reference count raised.  *out is a new
 * reference: release it with grammar_free.  Errors: PS_EFORMAT (not JSON),
 * PS_EUNSUPPORTED (keyword named in the detail), PS_EINVAL (unsatisfiable,
 * e.g. minimum > maximum), PS_ERANGE (a compile limit was hit; detail names
 * it).  Thread-safe. */
int  grammar_compile(grammar_vocab *v, const char *schema_json, size_t len,
                     const struct grammar_options *opt, grammar **out);
/* Schema text for OpenAI's response_format {"type":"json_object"}: any object. */
#define GRAMMAR_SCHEMA_JSON_OBJECT "{\"type\":\"object\",\"additionalProperties\":true}"
/* Drop a reference.  NULL-safe. */
void grammar_free(grammar *g);
/* Take another reference (release it with grammar_free).  Returns g. */
grammar *grammar_ref(grammar *g);

/* The engine's view of a compiled grammar (scheduler.h token_constraint):
 * put it in engine_request.constraint / sched_request.constraint.  It does
 * not take a reference by itself: the engine retains on submit and releases
 * when done, so g must stay alive until the submit call returns.  Each
 * sequence gets its own matcher; masks are sized for the model's vocabulary
 * (words past the tokenizer's are zero). */
struct token_constraint grammar_constraint(grammar *g);

/* A lazy variant (OpenAI tool_choice "auto": answer in text or call a
 * tool): the first token decides.  It may be any token the grammar allows
 * (then the whole output is a document of g, finishing when it is done) or
 * any token whose first byte no allowed token starts with (then the output
 * is free text, unmasked).  Tokens that start like a document but leave
 * the grammar are masked out at that first step only. */
struct token_constraint grammar_constraint_lazy(grammar *g);

/* The vocabulary g was compiled for. */
const grammar_vocab *grammar_vocab_of(const grammar *g);

/* Compile statistics (for tests and benchmarks). */
struct grammar_stats {
    int32_t n_rules, n_states, n_positions;
    int64_t n_uncertain;   /* context-dependent tokens over all positions */
    size_t  bytes;         /* memory held by the compiled grammar        */
    double  compile_ms;
};
void grammar_get_stats(const grammar *g, struct grammar_stats *st);

/* ---- matching ------------------------------------------------------------ */

/* New matcher at the start of the document; holds a reference to g. */
int  grammar_matcher_create(grammar *g, grammar_matcher **out);
void grammar_matcher_free(grammar_matcher *m); /* NULL-safe */
void grammar_matcher_reset(grammar_matcher *m);

/* Write the allowed-token bitset (grammar_mask_words(v) words).  Never all
 * zero while !is_done.  Typically a few microseconds. */
int  grammar_matcher_fill_mask(grammar_matcher *m, uint32_t *mask);

/* Advance by one token.  PS_EINVAL (state unchanged) when the token is not
 * allowed.  An EOG token is allowed only when can_end; it makes is_done. */
int  grammar_matcher_accept(grammar_matcher *m, int32_t token);
/* Advance by raw bytes (tests, forced prefixes).  PS_EINVAL when rejected. */
int  grammar_matcher_accept_bytes(grammar_matcher *m, const char *bytes, size_t n);

/* The bytes so far form a complete document. */
bool grammar_matcher_can_end(const grammar_matcher *m);
/* An EOG token was accepted, or the document is complete and nothing may
 * follow: generation must stop (finish_reason "stop"). */
bool grammar_matcher_is_done(const grammar_matcher *m);

/* ---- orchestrator actions ------------------------------------------------ */

/* Build the orchestrator action schema (DESIGN.md "Action") from a registry
 * description: a JSON array of {"name": str, "input_schema": schema}.  Each
 * agent's input_schema is inlined as the "args" of a call whose "to" is the
 * const agent name (anyOf over agents); the agent's own $defs are moved under
 * the action schema's $defs with a prefix and its $refs rewritten.  Result:
 *   anyOf [ {"calls": [call, ...]}, {"wait": true}, {"cancel": [id, ...]},
 *           {"final": {"answer": str, "uses": [id, ...]}} ]
 * with call = {"id": "c<digits>", "to": name, "args": ..., "after": [id...]}.
 * *schema_out is malloc'd JSON text (caller frees). */
int  grammar_action_schema(const char *registry_json, size_t len, char **schema_out);

/* Schema of one tool call (OpenAI tools): from a JSON array of
 * {"name": str, "parameters": schema} builds
 *   anyOf [ {"name": const name_i, "arguments": parameters_i}, ... ]
 * (both required, no other keys; each tool's $defs relocated as in
 * grammar_action_schema; absent parameters = an empty object).  The
 * generated text is then {"name": "<name>", "arguments": {...}}.
 * *schema_out is malloc'd JSON text (caller frees). */
int  grammar_tools_schema(const char *tools_json, size_t len, char **schema_out);

#endif /* PS_GRAMMAR_H */
