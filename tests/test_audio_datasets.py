"""bridge.sources.audio_datasets: each built-in reads a tiny fixture written in its published layout."""
import json
import textwrap

import numpy as np
import pytest

from bridge.sources import audio_datasets as D


def _touch(path):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(b"")
  return path


def test_folder_jsonl_is_the_contract(tmp_path):
  rows = [{"id": "c0", "path": "wav/c0.wav", "caption": "a C major chord on piano",
           "labels": {"key": "C", "mode": "major", "tempo": 120}},
          {"id": "c1", "path": "wav/c1.wav", "caption": "", "labels": {}}]
  (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  items = D.load_items(f"folder:{tmp_path}")
  assert [i.id for i in items] == ["c0", "c1"]
  assert items[0].audio == str(tmp_path / "wav/c0.wav")
  assert items[0].caption == "a C major chord on piano"
  assert items[0].labels == {"key": "C", "mode": "major", "tempo": 120}
  # the file itself works too, and audio_root moves the audio
  items = D.load_items(f"folder:{tmp_path / 'metadata.jsonl'}", audio_root="/elsewhere")
  assert items[1].audio == "/elsewhere/wav/c1.wav"


def test_folder_csv_label_columns(tmp_path):
  (tmp_path / "metadata.csv").write_text("id,path,caption,key,mode\n"
                                         "a,a.flac,bright tune,D,minor\n")
  (item,) = D.load_items(f"folder:{tmp_path}")
  assert (item.id, item.audio, item.caption) == ("a", str(tmp_path / "a.flac"), "bright tune")
  assert item.labels == {"key": "D", "mode": "minor"}


def test_folder_errors_name_file_and_line(tmp_path):
  (tmp_path / "metadata.jsonl").write_text('{"id": "a", "path": "a.wav"}\n{bad\n')
  with pytest.raises(D.AudioDatasetError, match=r"metadata.jsonl:2: not valid JSON"):
    D.load_items(f"folder:{tmp_path}")
  (tmp_path / "metadata.jsonl").write_text('{"id": "a", "path": "a.wav"}\n'
                                           '{"id": "a", "path": "b.wav"}\n')
  with pytest.raises(D.AudioDatasetError, match="duplicate item id 'a'"):
    D.load_items(f"folder:{tmp_path}")
  with pytest.raises(D.AudioDatasetError, match="expected <name>:<path>"):
    D.load_items("nosuch:/x")
  (tmp_path / "empty").mkdir()
  with pytest.raises(D.AudioDatasetError, match="metadata.jsonl or metadata.csv"):
    D.load_items(f"folder:{tmp_path / 'empty'}")


def test_musiccaps_layout(tmp_path):
  (tmp_path / "musiccaps-public.csv").write_text(textwrap.dedent('''\
      ytid,start_s,end_s,audioset_positive_labels,aspect_list,caption,author_id,is_balanced_subset,is_audioset_eval
      -0Gj8-vB1q4,30,40,"/m/0140xf,/m/02cjck","['low quality', 'sustained strings melody']","The low quality recording features a ballad song.",4,False,True
      -0SdAVK79lg,30,40,/m/0155w,"['guitar song', 'piano backing']","This song features an electric guitar.",0,False,False
      '''))
  wav = _touch(tmp_path / "audio" / "-0Gj8-vB1q4.wav")
  items = D.load_items(f"musiccaps:{tmp_path}")
  assert [i.id for i in items] == ["-0Gj8-vB1q4", "-0SdAVK79lg"]
  assert items[0].audio == str(wav)
  assert items[0].caption.startswith("The low quality recording")
  assert items[0].labels["aspects"] == ["low quality", "sustained strings melody"]
  assert items[0].labels["is_audioset_eval"] == "True" and items[0].labels["start_s"] == 30.0


def test_song_describer_layout(tmp_path):
  (tmp_path / "song_describer.csv").write_text(textwrap.dedent('''\
      caption_id,track_id,caption,is_valid_subset,familiarity,artist_id,album_id,path,duration
      0,1000,An instrumental with an acoustic guitar,True,1,3006,373,00/1000.2min.mp3,215.1
      1,1000,Calm guitar piece,False,0,3006,373,00/1000.2min.mp3,215.1
      '''))
  mp3 = _touch(tmp_path / "audio" / "00" / "1000.2min.mp3")
  items = D.load_items(f"song_describer:{tmp_path / 'song_describer.csv'}")
  assert [i.id for i in items] == ["0", "1"]                # one item per caption
  assert items[1].audio == str(mp3) and items[1].caption == "Calm guitar piece"
  assert items[0].labels["track_id"] == "1000" and items[0].labels["is_valid_subset"] == "True"


def test_mtg_jamendo_tsv_tags(tmp_path):
  tsv = tmp_path / "autotagging.tsv"
  tsv.write_text("TRACK_ID\tARTIST_ID\tALBUM_ID\tPATH\tDURATION\tTAGS\n"
                 "track_0000214\tartist_000014\talbum_000031\t14/214.mp3\t124.6\tgenre---punkrock"
                 "\tinstrument---guitar\tmood/theme---energetic\n"
                 "track_0000215\tartist_000014\talbum_000031\t15/215.mp3\t167.8\tgenre---metal"
                 "\tgenre---rock\n")
  low = _touch(tmp_path / "audio" / "15" / "215.low.mp3")
  items = D.load_items(f"mtg_jamendo:{tsv}")
  assert [i.id for i in items] == ["track_0000214", "track_0000215"]
  a, b = items
  assert a.labels["genre"] == "punkrock" and a.labels["instrument"] == "guitar"
  assert a.labels["mood_theme"] == "energetic" and a.labels["duration_s"] == 124.6
  assert b.labels["genre_all"] == ["metal", "rock"] and "instrument" not in b.labels
  assert a.audio == str(tmp_path / "audio" / "14" / "214.mp3") and b.audio == str(low)
  bad = tmp_path / "bad.tsv"
  bad.write_text("id\tpath\n1\tx\n")
  with pytest.raises(D.AudioDatasetError, match=r"bad.tsv:1: expected the MTG-Jamendo header"):
    D.load_items(f"mtg_jamendo:{bad}")


def test_fma_tracks_csv_two_row_header(tmp_path):
  meta = tmp_path / "fma_metadata"
  meta.mkdir()
  (meta / "tracks.csv").write_text(textwrap.dedent('''\
      ,album,album,set,set,track,track,track
      ,comments,title,split,subset,genre_top,genres,title
      track_id,,,,,,,
      2,0,AWOL - A Way Of Life,training,small,Hip-Hop,[21],Food
      140,0,Constant Hitmaker,test,large,Folk,[17],Queen Of The Wires
      '''))
  mp3 = _touch(tmp_path / "fma_small" / "000" / "000002.mp3")
  items = D.load_items(f"fma:{tmp_path}")
  assert [i.id for i in items] == ["2", "140"]
  assert items[0].audio == str(mp3)
  assert items[0].labels["genre_top"] == "Hip-Hop" and items[0].labels["subset"] == "small"
  assert items[1].labels == {"genre_top": "Folk", "subset": "large", "split": "test",
                             "title": "Queen Of The Wires"}
  assert items[1].audio.endswith("fma_small/000/000140.mp3")     # missing: reported at load


def test_user_plugin_file(tmp_path):
  plugin = tmp_path / "my_plugin.py"
  plugin.write_text(textwrap.dedent('''\
      import numpy as np
      from bridge.sources.audio_datasets import AudioItem

      def iter_items(location):
        yield ("tone", np.zeros(800, np.float32), "a tone", {"src": location}, 16000)
        yield AudioItem(id="file", audio=location + "/x.wav", caption="", labels={})
      '''))
  items = D.load_items(f"{plugin}:/data")
  assert items[0].id == "tone" and items[0].labels == {"src": "/data"}
  assert items[0].sample_rate == 16000 and items[1].audio == "/data/x.wav"
  with pytest.raises(D.AudioDatasetError, match="needs its sample_rate"):
    D.as_item(("x", np.zeros(3), "", {}), "t")
  (tmp_path / "empty.py").write_text("x = 1\n")
  with pytest.raises(D.AudioDatasetError, match="must define iter_items"):
    D.load_items(f"{tmp_path / 'empty.py'}")


def test_demo_chord_plugin_as_plugin_and_as_folder(tmp_path):
  """examples/chord_plugin.py (the audio demo's data): arrays through the plugin, wav files
  through the folder layout, same clips and labels."""
  import importlib.util
  import os
  import soundfile as sf
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  plugin = os.path.join(root, "examples", "chord_plugin.py")
  arrays = D.load_items(f"{plugin}:4")
  assert [i.labels for i in arrays][:2] == [{"mode": "major", "register": "low", "root": "C"},
                                            {"mode": "minor", "register": "low", "root": "C"}]
  spec = importlib.util.spec_from_file_location("chord_plugin", plugin)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  mod.write_folder(str(tmp_path), 4)
  files = D.load_items(f"folder:{tmp_path}")
  assert [(i.id, i.caption, i.labels) for i in files] == \
      [(i.id, i.caption, i.labels) for i in arrays]
  y, sr = sf.read(files[3].audio, dtype="float32")
  assert sr == arrays[3].sample_rate and np.abs(y - arrays[3].audio).max() < 1e-4  # 16-bit wav
