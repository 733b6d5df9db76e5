package incident

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"time"

	"go.uber.org/zap/zapcore"
)

// Snapshotting fields at the call.
//
// A zap field is either a value (ints, floats, bools, strings, durations,
// times: the Field struct holds them inline or boxed and immutable) or a
// promise to read something later (bytes the caller may reuse, Stringers,
// errors, marshalers, reflected values). Values are copied as they are, which
// costs nothing beyond copying the Field. Promises are kept only after we have
// made them into values, in the caller's goroutine, at the call: we replay the
// field once against a recording ObjectEncoder (freezer below) through zap's
// own Field.AddTo, so zap decides exactly what the field emits (an error's
// "Verbose" and "Causes" keys, the "Error" key after a marshaler fails,
// "<nil>" for a nil Stringer), and we keep what it emitted as plain fields and
// frozen objects and arrays. The inner core later sees the same calls and
// writes the same output. The cost is one pass over user code, which zap pays
// anyway when it encodes, plus an allocation or two per such field; entries
// whose fields are all values pay nothing. We chose this over encoding the
// whole entry to bytes in the caller because it keeps the inner core free to
// use any encoder and costs the hot path nothing in the common case.
//
// Two small differences from an unwrapped core, visible only to encoders that
// keep Go types (zapcore.MapObjectEncoder, zaptest/observer): AddInt and
// AddUint inside marshalers widen to int64 and uint64, and reflected values
// arrive as json.RawMessage holding their JSON (encoded with HTML escaping
// off, as zap's default reflected encoder does). Text and JSON output is the
// same. A marshaler or an unknown field type that panics gives a
// "<key>Error" field instead of a panic in the caller.

// fieldOverhead is the memory a queued zapcore.Field costs beyond its
// payloads: the struct itself (key and string headers, integer, interface).
const fieldOverhead = 64

// immutable says which field types are plain values, safe to keep as they
// are.
var immutable = func() (t [256]bool) {
	for _, ft := range []zapcore.FieldType{
		zapcore.BoolType, zapcore.Complex128Type, zapcore.Complex64Type,
		zapcore.DurationType, zapcore.Float64Type, zapcore.Float32Type,
		zapcore.Int64Type, zapcore.Int32Type, zapcore.Int16Type, zapcore.Int8Type,
		zapcore.StringType, zapcore.TimeType, zapcore.TimeFullType,
		zapcore.Uint64Type, zapcore.Uint32Type, zapcore.Uint16Type, zapcore.Uint8Type,
		zapcore.UintptrType, zapcore.NamespaceType, zapcore.SkipType,
	} {
		t[ft] = true
	}
	return t
}()

// snapshot returns fields safe to keep after the call, and an estimate of the
// memory they hold. When every field is a plain value it returns fields
// itself (the caller copies them); otherwise a new slice.
func snapshot(fields []zapcore.Field) ([]zapcore.Field, int) {
	size := 0
	for i := range fields {
		f := &fields[i]
		if !immutable[f.Type] {
			return freezeAll(fields)
		}
		size += fieldOverhead + len(f.Key) + len(f.String)
	}
	return fields, size
}

// freezeAll turns every promise in fields into values.
func freezeAll(fields []zapcore.Field) ([]zapcore.Field, int) {
	fz := freezer{fields: make([]zapcore.Field, 0, len(fields)+2)}
	for _, f := range fields {
		if immutable[f.Type] {
			fz.fields = append(fz.fields, f)
			fz.size += fieldOverhead + len(f.Key) + len(f.String)
			continue
		}
		fz.capture(f)
	}
	return fz.fields, fz.size
}

// freezer is an ObjectEncoder that records what it is told as frozen fields.
type freezer struct {
	fields []zapcore.Field
	size   int
}

func (z *freezer) capture(f zapcore.Field) {
	defer func() {
		if p := recover(); p != nil {
			z.AddString(f.Key+"Error", fmt.Sprintf("PANIC=%v", p))
		}
	}()
	f.AddTo(z)
}

func (z *freezer) add(f zapcore.Field, payload int) {
	z.fields = append(z.fields, f)
	z.size += fieldOverhead + len(f.Key) + payload
}

func (z *freezer) AddArray(key string, m zapcore.ArrayMarshaler) error {
	a := &arrayFreezer{}
	err := m.MarshalLogArray(a)
	z.add(zapcore.Field{Key: key, Type: zapcore.ArrayMarshalerType, Interface: frozenArray(a.elems)}, a.size)
	return err
}

func (z *freezer) AddObject(key string, m zapcore.ObjectMarshaler) error {
	o := &freezer{}
	err := m.MarshalLogObject(o)
	z.add(zapcore.Field{Key: key, Type: zapcore.ObjectMarshalerType, Interface: frozenObject(o.fields)}, o.size)
	return err
}

func (z *freezer) AddBinary(key string, v []byte) {
	z.add(zapcore.Field{Key: key, Type: zapcore.BinaryType, Interface: bytes.Clone(v)}, len(v))
}

func (z *freezer) AddByteString(key string, v []byte) {
	z.add(zapcore.Field{Key: key, Type: zapcore.ByteStringType, Interface: bytes.Clone(v)}, len(v))
}

func (z *freezer) AddBool(key string, v bool) {
	var i int64
	if v {
		i = 1
	}
	z.add(zapcore.Field{Key: key, Type: zapcore.BoolType, Integer: i}, 0)
}

func (z *freezer) AddComplex128(key string, v complex128) {
	z.add(zapcore.Field{Key: key, Type: zapcore.Complex128Type, Interface: v}, 0)
}

func (z *freezer) AddComplex64(key string, v complex64) {
	z.add(zapcore.Field{Key: key, Type: zapcore.Complex64Type, Interface: v}, 0)
}

func (z *freezer) AddDuration(key string, v time.Duration) {
	z.add(zapcore.Field{Key: key, Type: zapcore.DurationType, Integer: int64(v)}, 0)
}

func (z *freezer) AddFloat64(key string, v float64) {
	z.add(zapcore.Field{Key: key, Type: zapcore.Float64Type, Integer: int64(math.Float64bits(v))}, 0)
}

func (z *freezer) AddFloat32(key string, v float32) {
	z.add(zapcore.Field{Key: key, Type: zapcore.Float32Type, Integer: int64(math.Float32bits(v))}, 0)
}

func (z *freezer) AddInt(key string, v int) { z.AddInt64(key, int64(v)) }

func (z *freezer) AddInt64(key string, v int64) {
	z.add(zapcore.Field{Key: key, Type: zapcore.Int64Type, Integer: v}, 0)
}

func (z *freezer) AddInt32(key string, v int32) {
	z.add(zapcore.Field{Key: key, Type: zapcore.Int32Type, Integer: int64(v)}, 0)
}

func (z *freezer) AddInt16(key string, v int16) {
	z.add(zapcore.Field{Key: key, Type: zapcore.Int16Type, Integer: int64(v)}, 0)
}

func (z *freezer) AddInt8(key string, v int8) {
	z.add(zapcore.Field{Key: key, Type: zapcore.Int8Type, Integer: int64(v)}, 0)
}

func (z *freezer) AddString(key, v string) {
	z.add(zapcore.Field{Key: key, Type: zapcore.StringType, String: v}, len(v))
}

func (z *freezer) AddTime(key string, v time.Time) {
	z.add(zapcore.Field{Key: key, Type: zapcore.TimeFullType, Interface: v}, 0)
}

func (z *freezer) AddUint(key string, v uint) { z.AddUint64(key, uint64(v)) }

func (z *freezer) AddUint64(key string, v uint64) {
	z.add(zapcore.Field{Key: key, Type: zapcore.Uint64Type, Integer: int64(v)}, 0)
}

func (z *freezer) AddUint32(key string, v uint32) {
	z.add(zapcore.Field{Key: key, Type: zapcore.Uint32Type, Integer: int64(v)}, 0)
}

func (z *freezer) AddUint16(key string, v uint16) {
	z.add(zapcore.Field{Key: key, Type: zapcore.Uint16Type, Integer: int64(v)}, 0)
}

func (z *freezer) AddUint8(key string, v uint8) {
	z.add(zapcore.Field{Key: key, Type: zapcore.Uint8Type, Integer: int64(v)}, 0)
}

func (z *freezer) AddUintptr(key string, v uintptr) {
	z.add(zapcore.Field{Key: key, Type: zapcore.UintptrType, Integer: int64(v)}, 0)
}

func (z *freezer) AddReflected(key string, v any) error {
	raw, err := reflectedJSON(v)
	if err != nil {
		return err
	}
	z.add(zapcore.Field{Key: key, Type: zapcore.ReflectType, Interface: raw}, len(raw))
	return nil
}

func (z *freezer) OpenNamespace(key string) {
	z.add(zapcore.Field{Key: key, Type: zapcore.NamespaceType}, 0)
}

// reflectedJSON encodes v as zap's default reflected encoder would.
func reflectedJSON(v any) (json.RawMessage, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return json.RawMessage(bytes.TrimSuffix(buf.Bytes(), []byte("\n"))), nil
}

// frozenObject replays recorded fields into an encoder.
type frozenObject []zapcore.Field

// MarshalLogObject implements zapcore.ObjectMarshaler.
func (o frozenObject) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	for i := range o {
		o[i].AddTo(enc)
	}
	return nil
}
