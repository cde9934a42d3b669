package dicomcodec

// ByteRange is a span of an instance's stored bytes.
type ByteRange struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

// PixelDataLayout says where the Pixel Data value lies in the stored object,
// so that WADO-RS frames are served with range reads rather than whole-object
// reads. It is recorded at ingest while the bytes stream past.
type PixelDataLayout struct {
	// ValueOffset is the offset of the first byte of the Pixel Data value
	// (after its tag, VR and length); ValueLength is -1 when undefined
	// (encapsulated).
	ValueOffset int64 `json:"value_offset"`
	ValueLength int64 `json:"value_length"`
	// Encapsulated is true for compressed transfer syntaxes.
	Encapsulated bool `json:"encapsulated"`
	// Frames lists, per frame (index 0 = frame 1), the byte ranges that make
	// up that frame: one range for native data, one or more fragments for
	// encapsulated data. Empty when frames could not be located, and for
	// native data of more than 4,096 frames, whose ranges a reader computes
	// from the frame size.
	Frames [][]ByteRange `json:"frames,omitempty"`
}

// Tags used by WADO to locate and render pixel data, as Dataset keys.
const (
	TagSamplesPerPixel           = "00280002"
	TagPhotometricInterpretation = "00280004"
	TagPlanarConfiguration       = "00280006"
	TagBitsAllocated             = "00280100"
	TagBitsStored                = "00280101"
	TagHighBit                   = "00280102"
	TagPixelRepresentation       = "00280103"
	TagWindowCenter              = "00281050"
	TagWindowWidth               = "00281051"
	TagRescaleIntercept          = "00281052"
	TagRescaleSlope              = "00281053"
)

// Transfer syntaxes WADO treats specially.
const (
	TSImplicitLE         = "1.2.840.10008.1.2"
	TSExplicitLE         = "1.2.840.10008.1.2.1"
	TSExplicitBE         = "1.2.840.10008.1.2.2"
	TSDeflatedExplicitLE = "1.2.840.10008.1.2.1.99"
	TSJPEGBaseline       = "1.2.840.10008.1.2.4.50"
	TSRLELossless        = "1.2.840.10008.1.2.5"
)
