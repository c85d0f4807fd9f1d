#!/usr/bin/env python3
"""Writes the grammar test schemas (tests/data/schemas/NNN_name.json).

Hand-written, small enough that SmolLM2-135M finishes a document within a
short token budget, and covering the supported JSON Schema subset: objects
(required / optional / additionalProperties false, true, schema), arrays
(items, prefixItems, min/maxItems), strings (escapes, enum, const, pattern,
format, min/maxLength), integer/number bounds, boolean, null, anyOf/oneOf,
$ref/$defs (recursive too).  Run from anywhere; rewrites every file."""
import json
from pathlib import Path

S = []


def add(name, schema):
    S.append((name, schema))


def obj(props, required=None, **kw):
    d = {"type": "object", "properties": props}
    if required is not None:
        d["required"] = required
    d.update(kw)
    return d


STR = {"type": "string", "maxLength": 12}
INT = {"type": "integer", "minimum": 0, "maximum": 100}

# ---- primitives ----------------------------------------------------------
add("string_short", {"type": "string", "maxLength": 16})
add("string_min_max", {"type": "string", "minLength": 3, "maxLength": 8})
add("string_exact_len", {"type": "string", "minLength": 4, "maxLength": 4})
add("string_nonempty", {"type": "string", "minLength": 1, "maxLength": 20})
add("integer_any", {"type": "integer"})
add("integer_pos", {"type": "integer", "minimum": 1, "maximum": 9999})
add("integer_neg", {"type": "integer", "minimum": -1000, "maximum": -1})
add("integer_span0", {"type": "integer", "minimum": -50, "maximum": 50})
add("integer_excl", {"type": "integer", "exclusiveMinimum": 10, "exclusiveMaximum": 20})
add("integer_big", {"type": "integer", "minimum": 1000000, "maximum": 2000000})
add("integer_year", {"type": "integer", "minimum": 1900, "maximum": 2100})
add("number_any", {"type": "number"})
add("number_unit", {"type": "number", "minimum": 0, "maximum": 1})
add("number_temp", {"type": "number", "minimum": -40, "maximum": 60})
add("number_excl", {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 5})
add("number_frac_bounds", {"type": "number", "minimum": -2.5, "maximum": 7.5})
add("boolean", {"type": "boolean"})
add("null", {"type": "null"})
add("nullable_string", {"type": ["string", "null"], "maxLength": 10})
add("int_or_bool", {"type": ["integer", "boolean"], "minimum": 0, "maximum": 9})
add("enum_colors", {"enum": ["red", "green", "blue"]})
add("enum_mixed", {"enum": ["a", 1, 2.5, True, None, [1, 2], {"k": "v"}]})
add("enum_unicode", {"enum": ["café", "naïve", "日本", "emoji 😀", "Ω"]})
add("enum_escapes", {"enum": ["tab\there", "quote\"in", "back\\slash", "line\nbreak"]})
add("const_string", {"const": "fixed value"})
add("const_object", {"const": {"version": 2, "ok": True}})
add("const_number", {"type": "number", "const": 42})
add("enum_ints", {"type": "integer", "enum": [1, 3, 5, 7, 11]})

# ---- strings: patterns and formats ----------------------------------------
add("pattern_code", {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"})
add("pattern_phone", {"type": "string", "pattern": "^\\+?[0-9]{2,3}-[0-9]{3}-[0-9]{4}$"})
add("pattern_hex", {"type": "string", "pattern": "^#[0-9a-fA-F]{6}$"})
add("pattern_word", {"type": "string", "pattern": "^\\w{1,10}$"})
add("pattern_alt", {"type": "string", "pattern": "^(yes|no|maybe)$"})
add("pattern_semver", {"type": "string", "pattern": "^\\d{1,2}\\.\\d{1,2}\\.\\d{1,2}$"})
add("pattern_slug", {"type": "string", "pattern": "^[a-z0-9]+(-[a-z0-9]+){0,3}$"})
add("pattern_quoted", {"type": "string", "pattern": "^\"[a-z]{1,5}\"$"})
add("pattern_path", {"type": "string", "pattern": "^/[a-z]{1,6}(/[a-z]{1,6}){0,2}\\.(txt|md)$"})
add("pattern_unanchored_short", {"type": "string", "pattern": "^.{0,6}id.{0,6}$"})
add("pattern_no_space", {"type": "string", "pattern": "^[^ ]{1,12}$"})
add("pattern_unicode_lit", {"type": "string", "pattern": "^(café|thé) [0-9]$"})
add("format_date", {"type": "string", "format": "date"})
add("format_time", {"type": "string", "format": "time"})
add("format_datetime", {"type": "string", "format": "date-time"})
add("format_uuid", {"type": "string", "format": "uuid"})
add("format_email", {"type": "string", "format": "email"})
add("format_ipv4", {"type": "string", "format": "ipv4"})

# ---- objects ----------------------------------------------------------------
add("obj_person", obj({"name": STR, "age": INT}, ["name", "age"]))
add("obj_optional", obj({"name": STR, "nick": STR, "age": INT}, ["name"]))
add("obj_all_optional", obj({"a": {"type": "boolean"}, "b": {"type": "null"}, "c": INT}))
add("obj_empty_strict", {"type": "object", "additionalProperties": False})
add("obj_addl_bool", obj({"id": INT}, ["id"], additionalProperties={"type": "boolean"}))
add("obj_addl_int", {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 9}, "maxProperties": None} if False else {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 9}})
add("obj_addl_true", obj({"kind": {"const": "x"}}, ["kind"], additionalProperties=True))
add("obj_point", obj({"x": {"type": "number", "minimum": -10, "maximum": 10}, "y": {"type": "number", "minimum": -10, "maximum": 10}}, ["x", "y"]))
add("obj_nested", obj({"user": obj({"id": INT, "name": STR}, ["id", "name"]), "active": {"type": "boolean"}}, ["user", "active"]))
add("obj_deep", obj({"a": obj({"b": obj({"c": obj({"d": {"type": "integer", "minimum": 0, "maximum": 5}}, ["d"])}, ["c"])}, ["b"])}, ["a"]))
add("obj_weird_keys", obj({"first name": STR, "quote\"key": {"type": "boolean"}, "ünï": {"type": "null"}}, ["first name", "quote\"key", "ünï"]))
add("obj_required_extra", {"type": "object", "properties": {"a": INT}, "required": ["a", "b"], "additionalProperties": {"type": "boolean"}})
add("obj_enum_fields", obj({"status": {"enum": ["open", "closed"]}, "priority": {"enum": [1, 2, 3]}}, ["status", "priority"]))
add("obj_mixed_types", obj({"s": STR, "i": INT, "n": {"type": "number", "minimum": 0, "maximum": 9}, "b": {"type": "boolean"}, "z": {"type": "null"}}, ["s", "i", "n", "b", "z"]))
add("obj_weather_args", obj({"city": STR, "unit": {"enum": ["celsius", "fahrenheit"]}}, ["city"]))
add("obj_search_args", obj({"q": {"type": "string", "maxLength": 30}, "limit": {"type": "integer", "minimum": 1, "maximum": 10}}, ["q"]))
add("obj_calc_args", obj({"expr": {"type": "string", "pattern": "^[0-9+*/() -]{1,20}$"}}, ["expr"]))
add("obj_address", obj({"street": STR, "city": STR, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}, "country": {"enum": ["US", "FR", "DE"]}}, ["street", "city", "zip"]))
add("obj_product", obj({"sku": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{4}$"}, "price": {"type": "number", "minimum": 0, "maximum": 1000}, "in_stock": {"type": "boolean"}}, ["sku", "price", "in_stock"]))
add("obj_event", obj({"title": STR, "date": {"type": "string", "format": "date"}, "attendees": {"type": "integer", "minimum": 0, "maximum": 500}}, ["title", "date"]))
add("obj_rgb", obj({"r": {"type": "integer", "minimum": 0, "maximum": 255}, "g": {"type": "integer", "minimum": 0, "maximum": 255}, "b": {"type": "integer", "minimum": 0, "maximum": 255}}, ["r", "g", "b"]))
add("obj_flags", obj({k: {"type": "boolean"} for k in "abcdefgh"}, list("aceg")))
add("obj_lax_strings", {"type": "object", "additionalProperties": {"type": "string", "maxLength": 8}})
add("obj_no_type_props", {"properties": {"x": {"type": "boolean"}}, "required": ["x"]})
add("obj_titles_ignored", {"title": "T", "description": "d", "$comment": "c", "type": "object", "properties": {"v": {"type": "integer", "minimum": 0, "maximum": 3, "default": 1, "examples": [2]}}, "required": ["v"]})
add("obj_unicode_values", obj({"greeting": {"enum": ["héllo", "こんにちは", "привет"]}, "mood": {"const": "☺"}}, ["greeting", "mood"]))

# ---- arrays -----------------------------------------------------------------
add("arr_ints", {"type": "array", "items": INT, "maxItems": 5})
add("arr_strings_1_3", {"type": "array", "items": STR, "minItems": 1, "maxItems": 3})
add("arr_exact_2", {"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 2})
add("arr_empty_only", {"type": "array", "maxItems": 0})
add("arr_min_2_unbounded", {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 2, "maxItems": 6})
add("arr_tuple", {"type": "array", "prefixItems": [STR, INT, {"type": "boolean"}], "items": False})
add("arr_tuple_rest", {"type": "array", "prefixItems": [{"const": "head"}], "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 4})
add("arr_objects", {"type": "array", "items": obj({"k": STR, "v": INT}, ["k", "v"]), "minItems": 1, "maxItems": 3})
add("arr_nested", {"type": "array", "items": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "maxItems": 3}, "maxItems": 3})
add("arr_enum_items", {"type": "array", "items": {"enum": ["x", "y", "z"]}, "minItems": 1, "maxItems": 4})
add("arr_nullable_items", {"type": "array", "items": {"type": ["integer", "null"], "minimum": 0, "maximum": 5}, "maxItems": 4})
add("arr_any_items", {"type": "array", "maxItems": 3})
add("obj_with_list", obj({"name": STR, "scores": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 100}, "maxItems": 4}}, ["name", "scores"]))
add("obj_with_tags", obj({"tags": {"type": "array", "items": {"enum": ["a", "b", "c"]}, "minItems": 1, "maxItems": 3}}, ["tags"]))
add("arr_dates", {"type": "array", "items": {"type": "string", "format": "date"}, "minItems": 1, "maxItems": 2})

# ---- anyOf / oneOf ------------------------------------------------------------
add("anyof_prims", {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "string", "maxLength": 5}, {"type": "null"}]})
add("oneof_tagged", {"oneOf": [obj({"kind": {"const": "circle"}, "r": {"type": "number", "minimum": 0, "maximum": 10}}, ["kind", "r"]),
                               obj({"kind": {"const": "square"}, "side": {"type": "number", "minimum": 0, "maximum": 10}}, ["kind", "side"])]})
add("anyof_objects_shared_prefix", {"anyOf": [obj({"type": {"const": "a"}, "x": INT}, ["type", "x"]),
                                              obj({"type": {"const": "b"}, "y": STR}, ["type", "y"])]})
add("anyof_array_or_obj", {"anyOf": [{"type": "array", "items": INT, "maxItems": 3}, obj({"n": INT}, ["n"])]})
add("oneof_result", {"oneOf": [obj({"ok": {"const": True}, "value": INT}, ["ok", "value"]),
                               obj({"ok": {"const": False}, "error": STR}, ["ok", "error"])]})
add("anyof_nullable_obj", {"anyOf": [obj({"a": INT}, ["a"]), {"type": "null"}]})
add("obj_field_anyof", obj({"id": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 999}, {"type": "string", "pattern": "^id-[0-9]{1,3}$"}]}}, ["id"]))
add("allof_single", {"allOf": [obj({"q": {"type": "boolean"}}, ["q"])]})
add("oneof_enum_branches", {"oneOf": [{"enum": ["north", "south"]}, {"enum": [0, 90, 180, 270]}]})
add("anyof_in_array", {"type": "array", "items": {"anyOf": [{"type": "boolean"}, {"type": "integer", "minimum": 0, "maximum": 9}]}, "maxItems": 4})

# ---- $ref / $defs ---------------------------------------------------------------
add("ref_simple", {"$defs": {"name": STR}, "type": "object", "properties": {"first": {"$ref": "#/$defs/name"}, "last": {"$ref": "#/$defs/name"}}, "required": ["first", "last"]})
add("ref_definitions", {"definitions": {"pt": obj({"x": INT, "y": INT}, ["x", "y"])}, "type": "array", "items": {"$ref": "#/definitions/pt"}, "maxItems": 2})
add("ref_chain", {"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/c"}, "c": {"type": "integer", "minimum": 0, "maximum": 9}}, "$ref": "#/$defs/a"})
add("ref_tree", {"$defs": {"node": obj({"v": {"type": "integer", "minimum": 0, "maximum": 9}, "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2}}, ["v"])}, "$ref": "#/$defs/node"})
add("ref_linked_list", {"$defs": {"cell": obj({"val": {"type": "integer", "minimum": 0, "maximum": 9}, "next": {"anyOf": [{"$ref": "#/$defs/cell"}, {"type": "null"}]}}, ["val", "next"])}, "$ref": "#/$defs/cell"})
add("ref_root_recursive", obj({"name": STR, "child": {"$ref": "#"}}, ["name"]))
add("ref_in_anyof", {"$defs": {"yes": {"const": "yes"}, "no": {"const": "no"}}, "anyOf": [{"$ref": "#/$defs/yes"}, {"$ref": "#/$defs/no"}]})
add("ref_pointer_props", {"type": "object", "properties": {"a": INT, "b": {"$ref": "#/properties/a"}}, "required": ["a", "b"]})
add("ref_mutual", {"$defs": {"even": obj({"odd": {"anyOf": [{"$ref": "#/$defs/odd"}, {"type": "null"}]}}, ["odd"]), "odd": obj({"even": {"anyOf": [{"$ref": "#/$defs/even"}, {"type": "null"}]}}, ["even"])}, "$ref": "#/$defs/even"})
add("ref_expr", {"$defs": {"expr": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, obj({"op": {"enum": ["+", "*"]}, "args": {"type": "array", "items": {"$ref": "#/$defs/expr"}, "minItems": 2, "maxItems": 2}}, ["op", "args"])]}}, "$ref": "#/$defs/expr"})

# ---- generic / json_object --------------------------------------------------------
add("any_value", {})
add("true_schema", True)
add("json_object", {"type": "object", "additionalProperties": True})
add("obj_meta_any", obj({"meta": {}}, ["meta"]))

# ---- orchestrator-style -------------------------------------------------------------
add("action_like", {"anyOf": [
    obj({"calls": {"type": "array", "minItems": 1, "maxItems": 2, "items": obj({"id": {"type": "string", "pattern": "^c[0-9]{1,2}$"}, "to": {"enum": ["search", "math"]}, "args": obj({"q": STR}, ["q"])}, ["id", "to", "args"])}}, ["calls"]),
    obj({"wait": {"const": True}}, ["wait"]),
    obj({"final": obj({"answer": {"type": "string", "maxLength": 30}}, ["answer"])}, ["final"])]})
add("tool_call_openai", obj({"name": {"const": "get_weather"}, "arguments": obj({"location": STR, "days": {"type": "integer", "minimum": 1, "maximum": 7}}, ["location"])}, ["name", "arguments"]))
add("feedback_like", obj({"id": {"type": "string", "pattern": "^c[0-9]$"}, "status": {"enum": ["ok", "timeout", "exec_error"]}, "ms": {"type": "integer", "minimum": 0, "maximum": 99999}}, ["id", "status", "ms"]))
add("sentiment", obj({"label": {"enum": ["positive", "negative", "neutral"]}, "score": {"type": "number", "minimum": 0, "maximum": 1}}, ["label", "score"]))
add("classification_multi", obj({"labels": {"type": "array", "items": {"enum": ["bug", "feature", "docs"]}, "minItems": 1, "maxItems": 2}, "confidence": {"type": "number", "minimum": 0, "maximum": 1}}, ["labels"]))
add("qa_answer", obj({"answer": {"type": "string", "maxLength": 24}, "sources": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 5}, "maxItems": 3}}, ["answer"]))
add("kv_pairs", {"type": "array", "items": {"type": "array", "prefixItems": [STR, INT], "items": False, "minItems": 2}, "maxItems": 3})
add("matrix_2x2", {"type": "array", "items": {"type": "array", "items": {"type": "integer", "minimum": -9, "maximum": 9}, "minItems": 2, "maxItems": 2}, "minItems": 2, "maxItems": 2})
add("config", obj({"debug": {"type": "boolean"}, "level": {"enum": ["info", "warn", "error"]}, "retries": {"type": "integer", "minimum": 0, "maximum": 5}, "timeout_ms": {"type": "integer", "minimum": 100, "maximum": 60000}}, ["level"]))
add("book", obj({"title": {"type": "string", "maxLength": 20}, "author": {"type": "string", "maxLength": 16}, "year": {"type": "integer", "minimum": 1450, "maximum": 2025}, "isbn": {"type": "string", "pattern": "^97[89]-[0-9]{10}$"}}, ["title", "author", "year"]))
add("geo", obj({"lat": {"type": "number", "minimum": -90, "maximum": 90}, "lon": {"type": "number", "minimum": -180, "maximum": 180}}, ["lat", "lon"]))
add("money", obj({"amount": {"type": "number", "minimum": 0, "maximum": 1000000}, "currency": {"enum": ["USD", "EUR", "JPY"]}}, ["amount", "currency"]))

if __name__ == "__main__":
    out = Path(__file__).resolve().parent
    for old in out.glob("[0-9][0-9][0-9]_*.json"):
        old.unlink()
    names = set()
    for i, (name, schema) in enumerate(S):
        assert name not in names, name
        names.add(name)
        (out / f"{i:03d}_{name}.json").write_text(json.dumps(schema, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {len(S)} schemas to {out}")
