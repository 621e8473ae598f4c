import numpy as np, traceback
from braintumor.data.synthetic_volumes import series_datasets, to_bytes, tumour_stack
from braintumor.data.dicom_series import read_dicom_series
from braintumor.errors import BrainTumorError
cases = {
 "ps0": lambda d,i: setattr(d, "PixelSpacing", [0, 0]),
 "psneg": lambda d,i: setattr(d, "PixelSpacing", [-1, 1]),
 "ps1": lambda d,i: setattr(d, "PixelSpacing", [1]),
 "psnan": lambda d,i: setattr(d, "PixelSpacing", ["nan", "1"]),
 "iop0": lambda d,i: setattr(d, "ImageOrientationPatient", [0,0,0,0,0,0]),
 "iopparallel": lambda d,i: setattr(d, "ImageOrientationPatient", [1,0,0,1,0,0]),
 "iopnan": lambda d,i: setattr(d, "ImageOrientationPatient", ["nan",0,0,0,1,0]),
 "ipp2": lambda d,i: setattr(d, "ImagePositionPatient", [0, 0]),
 "ippnan": lambda d,i: setattr(d, "ImagePositionPatient", [0, 0, "nan"]),
 "ippinf": lambda d,i: setattr(d, "ImagePositionPatient", [0, 0, "1e308"]) if i == 1 else None,
 "ipp_missing_one": lambda d,i: delattr(d, "ImagePositionPatient") if i == 1 else None,
 "ipp_dup": lambda d,i: setattr(d, "ImagePositionPatient", [0,0,0]) if i < 2 else None,
 "ipp_all_dup": lambda d,i: setattr(d, "ImagePositionPatient", [0,0,0]),
 "no_ipp_no_in": lambda d,i: (delattr(d, "ImagePositionPatient"), delattr(d, "InstanceNumber")),
 "mixed": lambda d,i: setattr(d, "ImageOrientationPatient", [0,1,0,0,0,-1]) if i == 2 else None,
 "thick0": lambda d,i: (setattr(d, "SliceThickness", 0), setattr(d, "SpacingBetweenSlices", 0)),
 "window0": lambda d,i: (setattr(d, "WindowWidth", 0)),
 "slope0": lambda d,i: (setattr(d, "RescaleSlope", 0)),
 "rows0": lambda d,i: setattr(d, "Rows", 0),
 "bits": lambda d,i: setattr(d, "BitsAllocated", 12),
 "photo": lambda d,i: setattr(d, "PhotometricInterpretation", "RGB"),
 "nframes": lambda d,i: setattr(d, "NumberOfFrames", 3),
}
for name, f in cases.items():
    ds = series_datasets(tumour_stack(4, 16))
    for i, d in enumerate(ds): f(d, i)
    try:
        files = [(f"{i}.dcm", to_bytes(d)) for i, d in enumerate(ds)]
    except Exception as e:
        print(name, "cannot write", e); continue
    try:
        vol = read_dicom_series(files, "s/")
        print(name, "ok", len(vol.slices), vol.slices[0].size, vol.positions_mm[:2], vol.warnings)
    except BrainTumorError as e:
        print(name, "REFUSED", e)
    except Exception as e:
        print(name, "TRACEBACK", type(e).__name__, str(e)[:300])
