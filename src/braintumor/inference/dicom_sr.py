"""The study-level finding of a DICOM series as a DICOM Structured Report (highdicom Comprehensive 3D SR).

The report is a TID 1500 Measurement Report: the observer is the model as a device (name, and the weights'
hash as its version), the procedure is an MR of the brain (LOINC 24590-2), and one measurement group holds
the finding (class as a local code, ``99BRAINTUMOR``: no standard code says "this classifier's class"), the
peak slice's probability with the peak image as its source (SOP instance and frame), the algorithm's name,
version and rule. The study and series UIDs, the patient and study attributes come from the source headers
through highdicom (``evidence``): nothing is added that the series does not already hold. Writing into the
source series folder is refused unless asked (:func:`check_report_path`).

Example:
    >>> code = class_code("glioma")
    >>> code.value, code.scheme_designator
    ('glioma', '99BRAINTUMOR')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from braintumor.errors import BrainTumorError
from braintumor.inference.volume import VolumeResult

CODING_SCHEME = "99BRAINTUMOR"
MANUFACTURER = "braintumor (research use only, not a medical device)"
SR_SERIES_NUMBER = 9901
# Type 2 attributes highdicom copies from the first source image: written empty when the source has none.
TYPE2_FROM_SOURCE = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "StudyDate",
    "StudyTime",
)
# What a report needs to refer to a source image at all.
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


class ReportError(BrainTumorError):
    """A structured report that cannot be written (no DICOM source, unwritable place)."""


def class_code(name: str) -> Any:
    """The local code of a class or study finding (``glioma``, ``no_tumor``, ``indeterminate``...)."""
    from highdicom.sr import CodedConcept

    return CodedConcept(value=name, scheme_designator=CODING_SCHEME, meaning=name.replace("_", " "))


def check_report_path(path: Path, source: Path | str, *, allow_in_source: bool = False) -> Path:
    """``path`` resolved; refuses a place inside the source series folder unless ``allow_in_source``."""
    path, source = Path(path).resolve(), Path(source).resolve()
    folder = source if source.is_dir() else source.parent
    inside = path.parent == folder or folder in path.parents
    # A zip's folder is no series folder; a folder of slices or a DICOM file's folder is.
    if (source.is_dir() or source.suffix.lower() != ".zip") and inside and not allow_in_source:
        raise ReportError(
            f"{path}: the report would go into the source series folder {folder}; write it elsewhere "
            "(or pass --sr-in-source to allow it)"
        )
    if path == source:
        raise ReportError(f"{path}: the report would overwrite its source")
    return path


def _observation_context(result: VolumeResult) -> Any:
    from highdicom.sr import DeviceObserverIdentifyingAttributes, ObservationContext, ObserverContext
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    device = DeviceObserverIdentifyingAttributes(
        uid=generate_uid(),
        name=result.model_name,
        manufacturer_name="braintumor",
        model_name=f"{result.model_name} {result.model_version}",
    )
    return ObservationContext(
        observer_device_context=ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=device)
    )


def _finding_group(result: VolumeResult) -> Any:
    from highdicom.sr import (
        AlgorithmIdentification,
        Measurement,
        MeasurementsAndQualitativeEvaluations,
        SourceImageForMeasurementGroup,
        TrackingIdentifier,
    )
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    study = result.study
    algorithm = AlgorithmIdentification(
        name=result.model_name,
        version=result.model_version,
        parameters=[f"threshold={study.threshold:g}", f"min_consecutive={study.min_consecutive}", study.rule],
    )
    peak = None if study.peak_slice is None else result.slices[study.peak_slice]
    sources, measurements = [], []
    if peak is not None and peak.sop_instance_uid:
        ref = result.volume.slice_refs[peak.index]
        frames = None if ref is None or ref.frame_number is None else [ref.frame_number]
        sources.append(SourceImageForMeasurementGroup(ref.sop_class_uid, ref.sop_instance_uid, frames))  # type: ignore[union-attr]
    if peak is not None and study.peak_probability is not None:
        measurements.append(
            Measurement(
                name=class_code("peak_slice_probability"), value=float(study.peak_probability), unit=codes.UCUM.NoUnits
            )
        )
    if peak is not None and peak.position_mm is not None:
        measurements.append(
            Measurement(
                name=class_code("peak_slice_position_mm"), value=float(peak.position_mm), unit=codes.UCUM.Millimeter
            )
        )
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=generate_uid(), identifier="study-level finding"),
        # TID 1501's finding type is the concept "Finding" (DCM 121071) with the class as its value.
        finding_type=class_code(study.finding),
        algorithm_id=algorithm,
        measurements=measurements or None,
        source_images=sources or None,
    )


def report_evidence(datasets: list[Any], source: str) -> tuple[list[Any], list[str]]:
    """The source headers as the report's evidence: copies with every missing Type 2 attribute of
    :data:`TYPE2_FROM_SOURCE` present and empty, and a warning naming those attributes (none when complete).

    Raises :class:`ReportError` when an image lacks a UID the report must refer to it by.
    """
    from pydicom.dataset import Dataset

    missing: set[str] = set()
    evidence = []
    for dataset in datasets:
        for keyword in REQUIRED_UIDS:
            if not str(dataset.get(keyword, "") or "").strip():
                raise ReportError(f"{source}: a source image has no {keyword}: the DICOM SR cannot refer to it")
        clone = Dataset()
        for element in dataset:
            clone.add(element)
        for keyword in TYPE2_FROM_SOURCE:
            if keyword not in clone or clone[keyword].value is None:
                setattr(clone, keyword, "")
                missing.add(keyword)
        evidence.append(clone)
    names = [keyword for keyword in TYPE2_FROM_SOURCE if keyword in missing]
    warnings = [f"the source has no {', '.join(names)}: left empty in the DICOM SR"] if names else []
    return evidence, warnings


def build_report(result: VolumeResult) -> Any:
    """The Comprehensive 3D SR dataset (see the module docstring); needs a DICOM-series volume.

    Missing Type 2 patient and study attributes are written empty (a warning is added to the volume's
    warnings); a source the report cannot be built from is a one-line :class:`ReportError`.
    """
    series = result.volume.series
    if series is None or not series.datasets:
        raise ReportError("--dicom-sr needs DICOM input: a NIfTI file has no study or series to refer to")
    try:
        import highdicom  # noqa: F401
    except ImportError:
        raise ReportError("--dicom-sr needs highdicom: pip install 'braintumor[volumes]'") from None
    from highdicom.sr import Comprehensive3DSR, MeasurementReport
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    evidence, warnings = report_evidence(series.datasets, result.volume.source)
    result.volume.warnings.extend(w for w in warnings if w not in result.volume.warnings)
    try:
        report = MeasurementReport(
            observation_context=_observation_context(result),
            procedure_reported=codes.LN.BrainMRI,
            imaging_measurements=[_finding_group(result)],
        )
        return Comprehensive3DSR(
            evidence=evidence,
            content=report,
            series_instance_uid=generate_uid(),
            series_number=SR_SERIES_NUMBER,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,
            series_description=f"braintumor {result.model_name}: {result.study.finding}",
        )
    except (ValueError, TypeError, AttributeError, KeyError, IndexError) as error:
        # highdicom validates what it copies (dates, sex, UIDs): an odd source value is the source's fault.
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ReportError(f"{result.volume.source}: cannot write a DICOM SR from this series: {first_line}") from None


def save_report(dataset: Any, path: Path | str) -> Path:
    """Write a report dataset from :func:`build_report` to ``path`` (its folder is made when missing)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        dataset.save_as(path, enforce_file_format=True)
    except OSError as error:
        raise ReportError(f"{path}: cannot write the report: {error.strerror or error}") from None
    return path


def write_report(result: VolumeResult, path: Path | str) -> Path:
    """Build and write the report to ``path`` (check the place first with :func:`check_report_path`)."""
    return save_report(build_report(result), path)


def _text_items(items: Any, found: dict[str, list[str]]) -> None:
    """Every TEXT content item's value by concept meaning, at any depth."""
    for item in items:
        if item.get("ValueType") == "TEXT":
            found.setdefault(str(item.ConceptNameCodeSequence[0].CodeMeaning), []).append(str(item.TextValue))
        if "ContentSequence" in item:
            _text_items(item.ContentSequence, found)


def read_report_finding(path: Path | str) -> dict[str, Any]:
    """Read a report back with highdicom: the finding, the referenced study, series and peak image, the model."""
    import highdicom as hd

    report = hd.sr.srread(path)
    group = report.content.get_image_measurement_groups()[0]
    texts: dict[str, list[str]] = {}
    _text_items(report.ContentSequence, texts)
    evidence = report.CurrentRequestedProcedureEvidenceSequence[0]
    source = group.source_images[0] if group.source_images else None
    measurements = {m.name.value: float(m.value) for m in group.get_measurements()}
    return {
        "finding": str(group.finding_type.value),
        "study_uid": str(evidence.StudyInstanceUID),
        "series_uid": str(evidence.ReferencedSeriesSequence[0].SeriesInstanceUID),
        "peak_sop_instance_uid": None if source is None else str(source.referenced_sop_instance_uid),
        "peak_probability": measurements.get("peak_slice_probability"),
        "peak_position_mm": measurements.get("peak_slice_position_mm"),
        "algorithm_name": (texts.get("Algorithm Name") or [None])[0],
        "algorithm_version": (texts.get("Algorithm Version") or [None])[0],
        "patient_id": str(report.get("PatientID", "")),
    }
