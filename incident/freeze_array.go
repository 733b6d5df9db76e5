package incident

import (
	"bytes"
	"math"
	"time"

	"go.uber.org/zap/zapcore"
)

// arrayFreezer is an ArrayEncoder that records what it is told, so that an
// ArrayMarshaler can be replayed later without calling user code again. Each
// element is kept as a zapcore.Field whose Key is unused.
type arrayFreezer struct {
	elems []zapcore.Field
	size  int
}

func (a *arrayFreezer) add(f zapcore.Field, payload int) {
	a.elems = append(a.elems, f)
	a.size += fieldOverhead + payload
}

func (a *arrayFreezer) AppendBool(v bool) {
	var i int64
	if v {
		i = 1
	}
	a.add(zapcore.Field{Type: zapcore.BoolType, Integer: i}, 0)
}

func (a *arrayFreezer) AppendByteString(v []byte) {
	a.add(zapcore.Field{Type: zapcore.ByteStringType, Interface: bytes.Clone(v)}, len(v))
}

func (a *arrayFreezer) AppendComplex128(v complex128) {
	a.add(zapcore.Field{Type: zapcore.Complex128Type, Interface: v}, 0)
}

func (a *arrayFreezer) AppendComplex64(v complex64) {
	a.add(zapcore.Field{Type: zapcore.Complex64Type, Interface: v}, 0)
}

func (a *arrayFreezer) AppendFloat64(v float64) {
	a.add(zapcore.Field{Type: zapcore.Float64Type, Integer: int64(math.Float64bits(v))}, 0)
}

func (a *arrayFreezer) AppendFloat32(v float32) {
	a.add(zapcore.Field{Type: zapcore.Float32Type, Integer: int64(math.Float32bits(v))}, 0)
}

func (a *arrayFreezer) AppendInt(v int) { a.AppendInt64(int64(v)) }

func (a *arrayFreezer) AppendInt64(v int64) {
	a.add(zapcore.Field{Type: zapcore.Int64Type, Integer: v}, 0)
}

func (a *arrayFreezer) AppendInt32(v int32) {
	a.add(zapcore.Field{Type: zapcore.Int32Type, Integer: int64(v)}, 0)
}

func (a *arrayFreezer) AppendInt16(v int16) {
	a.add(zapcore.Field{Type: zapcore.Int16Type, Integer: int64(v)}, 0)
}

func (a *arrayFreezer) AppendInt8(v int8) {
	a.add(zapcore.Field{Type: zapcore.Int8Type, Integer: int64(v)}, 0)
}

func (a *arrayFreezer) AppendString(v string) {
	a.add(zapcore.Field{Type: zapcore.StringType, String: v}, len(v))
}

func (a *arrayFreezer) AppendUint(v uint) { a.AppendUint64(uint64(v)) }

func (a *arrayFreezer) AppendUint64(v uint64) {
	a.add(zapcore.Field{Type: zapcore.Uint64Type, Integer: int64(v)}, 0)
}

func (a *arrayFreezer) AppendUint32(v uint32) {
	a.add(zapcore.Field{Type: zapcore.Uint32Type, Integer: int64(v)}, 0)
}

func (a *arrayFreezer) AppendUint16(v uint16) {
	a.add(zapcore.Field{Type: zapcore.Uint16Type, Integer: int64(v)}, 0)
}

func (a *arrayFreezer) AppendUint8(v uint8) {
	a.add(zapcore.Field{Type: zapcore.Uint8Type, Integer: int64(v)}, 0)
}

func (a *arrayFreezer) AppendUintptr(v uintptr) {
	a.add(zapcore.Field{Type: zapcore.UintptrType, Integer: int64(v)}, 0)
}

func (a *arrayFreezer) AppendDuration(v time.Duration) {
	a.add(zapcore.Field{Type: zapcore.DurationType, Integer: int64(v)}, 0)
}

func (a *arrayFreezer) AppendTime(v time.Time) {
	a.add(zapcore.Field{Type: zapcore.TimeFullType, Interface: v}, 0)
}

func (a *arrayFreezer) AppendArray(m zapcore.ArrayMarshaler) error {
	sub := &arrayFreezer{}
	err := m.MarshalLogArray(sub)
	a.add(zapcore.Field{Type: zapcore.ArrayMarshalerType, Interface: frozenArray(sub.elems)}, sub.size)
	return err
}

func (a *arrayFreezer) AppendObject(m zapcore.ObjectMarshaler) error {
	o := &freezer{}
	err := m.MarshalLogObject(o)
	a.add(zapcore.Field{Type: zapcore.ObjectMarshalerType, Interface: frozenObject(o.fields)}, o.size)
	return err
}

func (a *arrayFreezer) AppendReflected(v any) error {
	raw, err := reflectedJSON(v)
	if err != nil {
		return err
	}
	a.add(zapcore.Field{Type: zapcore.ReflectType, Interface: raw}, len(raw))
	return nil
}

// frozenArray replays recorded elements into an encoder.
type frozenArray []zapcore.Field

// MarshalLogArray implements zapcore.ArrayMarshaler.
func (fa frozenArray) MarshalLogArray(enc zapcore.ArrayEncoder) error {
	for _, e := range fa {
		switch e.Type {
		case zapcore.BoolType:
			enc.AppendBool(e.Integer == 1)
		case zapcore.ByteStringType:
			enc.AppendByteString(e.Interface.([]byte))
		case zapcore.Complex128Type:
			enc.AppendComplex128(e.Interface.(complex128))
		case zapcore.Complex64Type:
			enc.AppendComplex64(e.Interface.(complex64))
		case zapcore.Float64Type:
			enc.AppendFloat64(math.Float64frombits(uint64(e.Integer)))
		case zapcore.Float32Type:
			enc.AppendFloat32(math.Float32frombits(uint32(e.Integer)))
		case zapcore.Int64Type:
			enc.AppendInt64(e.Integer)
		case zapcore.Int32Type:
			enc.AppendInt32(int32(e.Integer))
		case zapcore.Int16Type:
			enc.AppendInt16(int16(e.Integer))
		case zapcore.Int8Type:
			enc.AppendInt8(int8(e.Integer))
		case zapcore.StringType:
			enc.AppendString(e.String)
		case zapcore.Uint64Type:
			enc.AppendUint64(uint64(e.Integer))
		case zapcore.Uint32Type:
			enc.AppendUint32(uint32(e.Integer))
		case zapcore.Uint16Type:
			enc.AppendUint16(uint16(e.Integer))
		case zapcore.Uint8Type:
			enc.AppendUint8(uint8(e.Integer))
		case zapcore.UintptrType:
			enc.AppendUintptr(uintptr(e.Integer))
		case zapcore.DurationType:
			enc.AppendDuration(time.Duration(e.Integer))
		case zapcore.TimeFullType:
			enc.AppendTime(e.Interface.(time.Time))
		case zapcore.ArrayMarshalerType:
			if err := enc.AppendArray(e.Interface.(frozenArray)); err != nil {
				return err
			}
		case zapcore.ObjectMarshalerType:
			if err := enc.AppendObject(e.Interface.(frozenObject)); err != nil {
				return err
			}
		case zapcore.ReflectType:
			if err := enc.AppendReflected(e.Interface); err != nil {
				return err
			}
		}
	}
	return nil
}
