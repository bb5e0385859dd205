"""A corpus of hostile and unusual uploads, made on the fly with Pillow and plain bytes: nothing binary
is committed. tests/test_corpus.py sends every case to the real service.

Each case is a whole HTTP request (most are a multipart upload that the case builds by hand, so that
it can carry what a client library would escape or refuse to send) and the status it must get: a
JSON 4xx, or 201 for the images that are legitimate, however odd.
"""

import io
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from PIL import ExifTags, Image, PngImagePlugin

from tests.samples import image_bytes, noise_jpeg, png_with_header_size, zTXt_bomb

BOUNDARY = "corpus-boundary-7d3f"


@dataclass(frozen=True)
class Part:
    name: str
    value: bytes
    filename: bytes | None = None  # raw, so that NUL, CR/LF and the like reach the server as they are


@dataclass(frozen=True)
class Case:
    name: str
    status: int
    error: str | None = None  # the JSON error code, where one is certain
    data: bytes = b""  # the image part; ignored when `request` is set
    model_id: bytes = b"corpus"
    filename: bytes = b"upload.jpg"
    request: Callable[[str], bytes] | None = None  # a whole raw request, given the Host header
    half_close: bool = False  # stop sending (shut down the write side) after the request
    stored_filename: str | None = None  # for a 201: what the sanitized filename must be

    @property
    def legitimate(self) -> bool:
        return self.status == 201

    def raw(self, host: str) -> bytes:
        if self.request is not None:
            return self.request(host)
        parts = [Part("model_id", self.model_id), Part("file", self.data, self.filename)]
        return upload_request(host, multipart(parts))


def multipart(parts: list[Part], boundary: str = BOUNDARY) -> bytes:
    out = bytearray()
    for part in parts:
        out += f"--{boundary}\r\n".encode()
        disposition = f'Content-Disposition: form-data; name="{part.name}"'.encode()
        if part.filename is not None:
            disposition += b'; filename="' + part.filename + b'"'
        out += disposition + b"\r\n"
        if part.filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + part.value + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def upload_request(
    host: str,
    body: bytes,
    content_type: str = f"multipart/form-data; boundary={BOUNDARY}",
    length: int | None = None,
) -> bytes:
    head = (
        f"POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


# --- Images ------------------------------------------------------------------------------------


def encoded(im: Image.Image, fmt: str, **save) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **save)
    return buf.getvalue()


def photo(mode: str = "RGB", size: tuple[int, int] = (64, 48)) -> Image.Image:
    """Not symmetric, so that an orientation would show."""
    im = Image.new(mode, size)
    im.paste(Image.new(mode, (size[0] // 2, size[1] // 3), "white" if mode != "CMYK" else (0, 0, 0, 0)))
    return im


def jpeg_with_exif(**tags: object) -> bytes:
    exif = Image.Exif()
    for name, value in tags.items():
        if name == "GPSInfo":
            exif[ExifTags.IFD.GPSInfo] = value
        else:
            exif[ExifTags.Base[name]] = value
    return encoded(photo(), "JPEG", exif=exif)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


@cache
def flat_png(width: int, height: int) -> bytes:
    """A whole, valid 8-bit grey PNG of `width` x `height` black pixels: zlib squeezes each row of
    zeros to almost nothing, so a 400-megapixel image fits in well under a megabyte. Compressed a
    row at a time, never held whole."""
    compressor = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the pixels
    idat = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")
    )


def corrupt_jpeg() -> bytes:
    """A JPEG whose frame header (SOF0) claims zero colour components."""
    data = bytearray(image_bytes("JPEG", (64, 48)))
    sof = data.index(b"\xff\xc0")
    data[sof + 9] = 0  # marker (2), length (2), precision (1), height (2), width (2): components
    return bytes(data)


def corrupt_png() -> bytes:
    """A PNG whose image data was damaged: a byte in IDAT flipped, so its CRC no longer matches."""
    data = bytearray(image_bytes("PNG", (64, 48)))
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF
    return bytes(data)


def gif_screen_bomb() -> bytes:
    """A 1x1 GIF whose logical screen claims 65535 x 65535 pixels."""
    data = bytearray(encoded(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", 0xFFFF, 0xFFFF)
    return bytes(data)


def gif_frame_bomb(frames: int = 20_000, screen: tuple[int, int] = (5000, 5000)) -> bytes:
    """An animation of `frames` 1x1 frames on a 25-megapixel screen: small on disk, but a decoder
    that walks every frame composites 500 gigapixels. Only the first frame may ever be decoded."""
    single = encoded(Image.new("P", (1, 1)), "GIF")
    table = 3 * 2 ** ((single[10] & 0x07) + 1) if single[10] & 0x80 else 0
    descriptor = single.index(b",", 13 + table)
    frame = single[descriptor:-1]  # image descriptor and data, without the trailer
    control = b"\x21\xf9\x04\x04\x01\x00\x00\x00"  # graphic control: keep, 10 ms
    header = b"GIF89a" + struct.pack("<HH", *screen) + single[10:13] + single[13 : 13 + table]
    return header + (control + frame) * frames + b";"


def apng_frame_bomb() -> bytes:
    """An animated PNG whose acTL chunk claims 2**31 - 1 frames; two are there."""
    frames = [Image.new("RGB", (64, 48), color) for color in ("red", "blue")]
    data = encoded(frames[0], "PNG", save_all=True, append_images=frames[1:])
    actl = data.index(b"acTL") - 4
    return data[:actl] + png_chunk(b"acTL", struct.pack(">II", 2**31 - 1, 0)) + data[actl + 20 :]


def gif_js_polyglot() -> bytes:
    """A GIF that is also JavaScript: `GIF89a/*...binary...*/=alert(1);`. Its width is 0x2A2F, so
    that the bytes after the signature open a comment."""
    data = encoded(Image.new("P", (0x2A2F, 10)), "GIF")
    data = b"GIF89a" + data[6:]
    assert data[6:8] == b"/*" and b"*/" not in data
    return data + b"*/=alert(1);"


def png_with_html_text() -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "<html><body><script>alert(document.cookie)</script></body></html>")
    return encoded(photo(), "PNG", pnginfo=info)


def cmyk_jpeg() -> bytes:
    return encoded(photo("CMYK"), "JPEG")


def palette_png_with_transparency() -> bytes:
    im = photo("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    return encoded(im, "PNG", transparency=0)


def zip_file() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("image.jpg", image_bytes("JPEG"))
    return buf.getvalue()


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE svg [
 <!ENTITY a "lollollollollollollollollollol">
 <!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
 <!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">
 <!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">
 <!ENTITY e "&d;&d;&d;&d;&d;&d;&d;&d;&d;&d;">
 <!ENTITY f "&e;&e;&e;&e;&e;&e;&e;&e;&e;&e;">
 <!ENTITY g "&f;&f;&f;&f;&f;&f;&f;&f;&f;&f;">
 <!ENTITY h "&g;&g;&g;&g;&g;&g;&g;&g;&g;&g;">
 <!ENTITY i "&h;&h;&h;&h;&h;&h;&h;&h;&h;&h;">
]>
<svg xmlns="http://www.w3.org/2000/svg"><text>&i;</text></svg>
"""
SVG_SCRIPT = b'<svg xmlns="http://www.w3.org/2000/svg" onload="alert(1)"><script>alert(2)</script></svg>'
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00\x00\x00\x08mdat" + bytes(64)
POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 1 1\n0 0 moveto showpage\n"
GPS = {1: "N", 2: (52.0, 22.0, 5.0), 3: "E", 4: (4.0, 53.0, 30.0)}  # latitude and longitude
ELF = b"\x7fELF\x02\x01\x01\x00" + bytes(8) + b"\x02\x00\x3e\x00" + bytes(100)


# --- Broken requests ---------------------------------------------------------------------------


def no_boundary(host: str) -> bytes:
    body = multipart([Part("model_id", b"corpus"), Part("file", image_bytes(), b"a.jpg")])
    return upload_request(host, body, content_type="multipart/form-data")


def truncated_body(host: str) -> bytes:
    """Content-Length promises more than is sent; the client then stops sending (half-close)."""
    body = multipart([Part("model_id", b"corpus"), Part("file", image_bytes("PNG", (256, 256)), b"a.png")])
    return upload_request(host, body[: len(body) // 2], length=len(body))


def ten_thousand_parts(host: str) -> bytes:
    parts = [Part(f"field{i}", b"x") for i in range(10_000)]
    return upload_request(
        host, multipart([*parts, Part("model_id", b"corpus"), Part("file", image_bytes(), b"a.jpg")])
    )


def duplicated_file_field(host: str) -> bytes:
    parts = [
        Part("model_id", b"corpus"),
        Part("file", image_bytes(seed=1), b"a.jpg"),
        Part("file", image_bytes(seed=2), b"b.jpg"),
    ]
    return upload_request(host, multipart(parts))


def chunked_without_length(host: str) -> bytes:
    body = multipart([Part("model_id", b"corpus"), Part("file", image_bytes(), b"a.jpg")])
    head = (
        f"POST /upload HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"


# --- The corpus --------------------------------------------------------------------------------

NOT_AN_IMAGE = "not_an_image"
CORRUPT = "corrupt_image"
PIXELS = "too_many_pixels"
MODEL_ID = "invalid_model_id"


def cases() -> list[Case]:
    """Every case, built afresh (the large ones are cached)."""
    orientations = [
        Case(f"EXIF orientation {n}", 201, data=jpeg_with_exif(Orientation=n)) for n in range(1, 9)
    ]
    hostile_model_ids = [
        Case(f"model_id: {name}", 400, MODEL_ID, data=image_bytes(), model_id=value)
        for name, value in [
            ("path traversal", b"../../etc/passwd"),
            ("NUL", b"model\x00id"),
            ("CR/LF", b"model\r\nX-Injected: 1"),
            ("RTL override", "model\u202edi".encode()),
            ("5,000 characters", b"m" * 5000),
            ("Mongo operator", b'{"$gt": ""}'),
            ("Mongo $where", b"$where"),
        ]
    ]
    hostile_filenames = [
        Case(f"filename: {name}", 201, data=image_bytes(seed=i), filename=value, stored_filename=kept)
        for i, (name, value, kept) in enumerate(
            [
                ("path traversal", b"../../../etc/passwd.jpg", "passwd.jpg"),
                ("Windows path", b"C:\\Windows\\system32\\evil.jpg", "evil.jpg"),
                ("NUL", b"photo\x00.php.jpg", "photo.php.jpg"),
                ("CR/LF", b"photo\r\nX-Injected: 1.jpg", '"photo'),  # the line break ends the header
                ("RTL override", "photo\u202egpj.exe".encode(), "photogpj.exe"),
                ("900 characters", b"n" * 896 + b".jpg", "n" * 251 + ".jpg"),
                ("Mongo operator", b'{"$gt": ""}.jpg', '{"$gt": ""}.jpg'),
            ]
        )
    ]
    too_long = Case(
        "filename: 5,000 characters",  # past Django's 1 KB for a part's headers
        400,
        "malformed_request",
        data=image_bytes(),
        filename=b"n" * 4996 + b".jpg",
    )
    return [
        # Empty, and nothing but a magic number.
        Case("empty file", 400, "empty_file", data=b""),
        Case("JPEG magic only", 422, CORRUPT, data=b"\xff\xd8\xff"),
        Case("PNG magic only", 422, CORRUPT, data=b"\x89PNG\r\n\x1a\n"),
        Case("GIF magic only", 422, CORRUPT, data=b"GIF89a"),
        Case("WebP magic only", 422, CORRUPT, data=b"RIFF\x00\x00\x00\x00WEBPVP8 "),
        # Truncated and corrupt.
        Case("truncated JPEG", 422, CORRUPT, data=noise_jpeg((256, 256))[:-2000]),
        Case("truncated PNG", 422, CORRUPT, data=image_bytes("PNG", (256, 256))[:-30]),
        Case("corrupt JPEG (zero components)", 422, CORRUPT, data=corrupt_jpeg()),
        Case("corrupt PNG (damaged IDAT)", 422, CORRUPT, data=corrupt_png()),
        # Pixel floods: refused from the header, before any pixel is decoded.
        Case("PNG header-only pixel flood", 422, PIXELS, data=png_with_header_size(100_000, 100_000)),
        Case("PNG of 400 megapixels", 422, PIXELS, data=flat_png(20_000, 20_000)),
        Case("PNG just over the pixel limit", 422, PIXELS, data=flat_png(7072, 7071)),
        Case("GIF logical-screen bomb", 422, PIXELS, data=gif_screen_bomb()),
        Case("PNG zTXt text bomb", 422, CORRUPT, data=zTXt_bomb()),
        # Animations: only the first frame is ever decoded, so a frame bomb is harmless.
        Case("GIF frame bomb (20,000 frames)", 201, data=gif_frame_bomb()),
        Case("APNG claiming 2**31-1 frames", 201, data=apng_frame_bomb()),
        # Not images, whatever their name says.
        Case("SVG with script", 415, NOT_AN_IMAGE, data=SVG_SCRIPT, filename=b"x.svg"),
        Case("SVG billion laughs", 415, NOT_AN_IMAGE, data=BILLION_LAUGHS, filename=b"x.svg"),
        Case("HTML named .jpg", 415, NOT_AN_IMAGE, data=b"<!doctype html><script>alert(1)</script>"),
        Case("PDF named .jpg", 415, NOT_AN_IMAGE, data=b"%PDF-1.7\n1 0 obj<</Type/Catalog>>endobj\n%%EOF"),
        Case("ZIP named .jpg", 415, NOT_AN_IMAGE, data=zip_file()),
        Case("ELF named .jpg", 415, NOT_AN_IMAGE, data=ELF),
        Case("PostScript named .jpg", 415, NOT_AN_IMAGE, data=POSTSCRIPT),
        # Images that carry something else: stored, and served so that browsers never run it.
        Case("GIF/JS polyglot", 201, data=gif_js_polyglot()),
        Case("HTML in a PNG text chunk", 201, data=png_with_html_text()),
        # Metadata and colour: all legitimate.
        Case("huge EXIF (64 KB)", 201, data=jpeg_with_exif(ImageDescription="A" * 64_000)),
        Case("GPS EXIF", 201, data=jpeg_with_exif(GPSInfo=GPS)),
        *orientations,
        Case("CMYK JPEG", 201, data=cmyk_jpeg()),
        Case("16-bit PNG", 201, data=encoded(Image.new("I;16", (64, 48), 40_000), "PNG")),
        Case("palette PNG with transparency", 201, data=palette_png_with_transparency()),
        Case("RGBA PNG", 201, data=image_bytes("PNG", alpha=True)),
        # Formats that are not allowed (ALLOWED_IMAGE_FORMATS is JPEG, PNG, WebP, GIF).
        Case("HEIC", 415, NOT_AN_IMAGE, data=HEIC, filename=b"x.heic"),
        Case("TIFF", 415, NOT_AN_IMAGE, data=image_bytes("TIFF"), filename=b"x.tif"),
        Case("BMP", 415, NOT_AN_IMAGE, data=image_bytes("BMP"), filename=b"x.bmp"),
        Case("ICO", 415, NOT_AN_IMAGE, data=image_bytes("ICO"), filename=b"x.ico"),
        # Hostile model_ids are refused; hostile filenames are kept as harmless metadata.
        *hostile_model_ids,
        *hostile_filenames,
        too_long,
        # Broken requests.
        Case("multipart without a boundary", 400, "malformed_request", request=no_boundary),
        Case("truncated body", 400, request=truncated_body, half_close=True),
        Case("10,000 parts", 400, "too_many_parts", request=ten_thousand_parts),
        Case("duplicated file field", 400, "too_many_files", request=duplicated_file_field),
        Case("chunked body without a length", 411, "length_required", request=chunked_without_length),
    ]
