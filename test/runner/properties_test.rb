# frozen_string_literal: true

require_relative 'test_helper'

class PropertiesTest < Minitest::Test
  include RunnerTest

  PROPERTIES = {
    'project' => { 'server' => { 'setting' => 'project-value', 'port' => 80 }, 'obsolete' => true },
    'environment' => { 'server' => { 'setting' => 'env-value' }, 'tags' => %w[a b] }
  }.freeze

  def test_dot_symbol_and_string_access_read_the_merged_properties
    write_context(properties: PROPERTIES)
    write('actions.rb', <<~RUBY)
      require 'opschain'
      action :show do
        puts OpsChain.properties.server.setting
        puts OpsChain.properties[:server][:setting]
        puts OpsChain.properties['server']['port']
        puts OpsChain.properties.tags.join(',')
      end
    RUBY
    result = action('show')
    assert result.success?, result.stderr
    assert_equal %w[env-value env-value 80 a,b], result.stdout.lines.map(&:chomp)
  end

  def test_the_merged_view_is_read_only_at_every_depth_and_nothing_leaks_into_the_diffs
    write_context(properties: PROPERTIES)
    write('actions.rb', <<~RUBY)
      action :write do
        [-> { OpsChain.properties['server']['setting'] = 'x' },
         -> { OpsChain.properties.server.setting = 'x' },
         -> { OpsChain.properties[:new] = 1 },
         -> { OpsChain.properties.server.delete(:port) },
         -> { OpsChain.properties.tags << 'c' },
         -> { OpsChain.context.change.id = 'x' }].each do |write|
          write.call
          puts 'written'
        rescue OpsChain::ReadOnlyError, FrozenError => e
          puts e.class
        end
      end
    RUBY
    result = action('write')
    assert result.success?, result.stderr
    refute_includes result.stdout, 'written'
    assert_equal({}, diffs)
  end

  def test_properties_for_is_writable_with_dot_assignment_and_becomes_each_owners_diffs
    write_context(properties: PROPERTIES)
    write('actions.rb', <<~RUBY)
      action :change do
        OpsChain.properties_for(:project).server_name = 'server1.example.com'
        OpsChain.properties_for(:project).parent = { child: { grandchild: 'value' } }
        OpsChain.properties_for(:project).parent.child.grandchild = 'new value'
        OpsChain.properties_for(:project).delete(:obsolete)
        OpsChain.properties_for('environment')[:server][:setting] = 'changed'
        puts OpsChain.properties.server.setting
        puts OpsChain.properties.parent.child.grandchild
      end
    RUBY
    result = action('change')
    assert result.success?, result.stderr
    assert_equal ['changed', 'new value'], result.stdout.lines.map(&:chomp)
    assert_equal [
      { 'op' => 'remove', 'path' => '/obsolete' },
      { 'op' => 'add', 'path' => '/server_name', 'value' => 'server1.example.com' },
      { 'op' => 'add', 'path' => '/parent', 'value' => { 'child' => { 'grandchild' => 'new value' } } }
    ], diffs['project']
    assert_equal [{ 'op' => 'replace', 'path' => '/server/setting', 'value' => 'changed' }], diffs['environment']
    assert_equal 'changed', step_result.dig('step', 'properties', 'server', 'setting')
  end

  def test_a_copy_of_the_merged_properties_does_not_follow_later_changes
    write_context(properties: { 'project' => { 'example' => '' } })
    write('actions.rb', <<~RUBY)
      action :copy do
        props = OpsChain.properties
        OpsChain.properties_for(:project).example = 'hello'
        puts OpsChain.properties.example, props.example.inspect
      end
    RUBY
    result = action('copy')
    assert_equal ['hello', '""'], result.stdout.lines.map(&:chomp)
  end

  def test_the_older_project_and_environment_properties_api
    write_context(properties: PROPERTIES, context: { 'parents' => { 'project' => { 'code' => 'fin' } } })
    write('actions.rb', <<~RUBY)
      action :older do
        puts OpsChain.project.properties.server.port
        puts OpsChain.project.code
        OpsChain.environment.properties.region = 'east'
      end
    RUBY
    result = action('older')
    assert result.success?, result.stderr
    assert_equal %w[80 fin], result.stdout.lines.map(&:chomp)
    assert_equal [{ 'op' => 'add', 'path' => '/region', 'value' => 'east' }], diffs['environment']
  end

  def test_an_unknown_owner_is_refused_naming_the_known_ones
    write_context(properties: PROPERTIES)
    write('actions.rb', "action(:asset) { OpsChain.properties_for(:asset).x = 1 }\n")
    result = action('asset')
    refute result.success?
    assert_match(/no asset properties \(its owners: repository, project, environment\)/, result.stderr)
  end

  def test_repository_properties_sit_below_every_owner_and_are_read_only
    write_context(properties: PROPERTIES, folder: '.opschain')
    write('.opschain/properties.json', JSON.generate('server' => { 'setting' => 'repo', 'repo_only' => 'r' }, 'opschain' => { 'env' => { 'FROM_REPO' => 'yes' } }))
    write('actions.rb', <<~RUBY)
      action :repo do
        puts OpsChain.properties.server.setting, OpsChain.properties.server.repo_only, ENV['FROM_REPO']
        puts OpsChain.repository_properties.server.setting
        begin
          OpsChain.repository_properties.server.setting = 'x'
        rescue OpsChain::ReadOnlyError
          puts 'read only'
        end
      end
    RUBY
    result = action('repo', env: { 'OPSCHAIN_REPO_FOLDER' => '.opschain' })
    assert result.success?, result.stderr
    assert_equal %w[env-value r yes repo], result.stdout.lines.first(4).map(&:chomp)
    assert_equal 'read only', result.stdout.lines.last.chomp
    assert File.exist?(File.join(@repo, '.opschain/step_result.json'))
  end

  def test_the_properties_tree_applies_the_files_of_the_steps_parents_top_down
    write_context(properties: { 'project' => {} }, folder: '.opschain',
                  context: { 'parents' => { 'project' => { 'code' => 'bank' }, 'environment' => { 'code' => 'dev' } } })
    tree = {
      'properties/common.json' => { 'level' => 'root', 'root' => 1 },
      'properties/projects/common.yaml' => "level: projects\nprojects: 1\n",
      'properties/projects/bank/bank.json' => { 'level' => 'bank', 'bank' => 1 },
      'properties/projects/other/other.json' => { 'level' => 'other', 'other' => 1 },
      'properties/projects/bank/environments/all.json' => { 'level' => 'all-envs' },
      'properties/projects/bank/environments/dev/b.json' => { 'level' => 'dev-b' },
      'properties/projects/bank/environments/dev/a.json' => { 'level' => 'dev-a', 'dev' => 1 },
      'properties/projects/bank/environments/dev/ignored.txt' => 'not properties',
      'properties/projects/bank/environments/staging/s.json' => { 'level' => 'staging' }
    }
    tree.each { |path, content| write(".opschain/#{path}", content.is_a?(String) ? content : JSON.generate(content)) }
    write('actions.rb', <<~RUBY)
      action :tree do
        puts OpsChain.properties.level, OpsChain.properties.to_h.keys.sort.join(',')
        puts OpsChain.repository_properties_for(:project).to_h.keys.join(','), OpsChain.repository_properties_for(:environment).level
      end
    RUBY
    result = action('tree', env: { 'OPSCHAIN_REPO_FOLDER' => '.opschain' })
    assert result.success?, result.stderr
    assert_equal ['dev-b', 'bank,dev,level,projects,root', 'level,bank', 'dev-b'], result.stdout.lines.map(&:chomp)
  end

  def test_the_mintpress_folder_is_used_when_the_configured_one_is_absent
    write_context(properties: PROPERTIES, folder: '.mintpress')
    write('actions.rb', "action(:x) { OpsChain.properties_for(:project).seen = OpsChain.properties.server.setting }\n")
    result = action('x', env: { 'OPSCHAIN_REPO_FOLDER' => '.opschain' })
    assert result.success?, result.stderr
    assert_equal [{ 'op' => 'add', 'path' => '/seen', 'value' => 'env-value' }], diffs('.mintpress')['project']
  end

  def test_env_var_properties_reach_the_action_later_owners_winning
    write_context(properties: {
                    'project' => { 'opschain' => { 'env' => { 'NAME' => 'project', 'ONLY_PROJECT' => 1 } } },
                    'environment' => { 'opschain' => { 'env' => { 'NAME' => 'environment' } } }
                  })
    write('actions.rb', "action(:env) { puts ENV['NAME'], ENV['ONLY_PROJECT'] }\n")
    assert_equal %w[environment 1], action('env').stdout.lines.map(&:chomp)
  end

  def test_file_properties_are_written_before_the_action_and_store_file_keeps_one
    files = {
      "#{@repo}/files/plain.txt" => { 'content' => 'plain text', 'mode' => '0600' },
      '~/files/data.json' => { 'content' => { 'json' => 'file' }, 'format' => 'json' },
      "#{@repo}/files/blob.bin" => { 'content' => ['hi there'].pack('m0'), 'format' => 'base64' }
    }
    write_context(properties: { 'project' => { 'opschain' => { 'files' => files } }, 'environment' => {} })
    write('actions.rb', <<~RUBY)
      puts File.read('files/plain.txt') # the files are there when actions.rb loads
      action :files do
        puts format('%o', File.stat('files/plain.txt').mode & 0o777)
        puts JSON.parse(File.read('files/data.json'))['json']
        puts File.read('files/blob.bin')
        File.write('known_hosts', "host key\\n")
        OpsChain.store_file!(:environment, 'known_hosts')
        OpsChain.store_file!(:environment, 'files/blob.bin', format: :base64)
      end
    RUBY
    result = action('files')
    assert result.success?, result.stderr
    assert_equal ['plain text', '600', 'file', 'hi there'], result.stdout.lines.map(&:chomp)
    assert_equal [{ 'op' => 'add', 'path' => '/opschain', 'value' => { 'files' => {
      "#{@repo}/known_hosts" => { 'content' => "host key\n" },
      "#{@repo}/files/blob.bin" => { 'content' => ['hi there'].pack('m0'), 'format' => 'base64' }
    } } }], diffs['environment']
  end

  def test_the_older_step_context_shape_is_understood
    FileUtils.mkdir_p(File.join(@repo, '.mintpress'))
    File.write(File.join(@repo, '.mintpress/step_context.json'), JSON.generate(
      'context' => { 'project' => { 'code' => 'fin' }, 'environment' => { 'code' => 'dev' } },
      'project' => { 'properties' => { 'a' => 1 } }, 'environment' => { 'properties' => { 'b' => 2 } }
    ))
    write('actions.rb', "action(:old) { puts OpsChain.context.parents.environment.code, OpsChain.properties.a + OpsChain.properties.b }\n")
    result = action('old')
    assert result.success?, result.stderr
    assert_equal %w[dev 3], result.stdout.lines.map(&:chomp)
  end
end
