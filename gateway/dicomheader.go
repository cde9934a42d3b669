package gateway

import (
	_ "github.com/suyashkumar/dicom" // the header parser (STOW-RS work)
)
